"""The registry pages tell the story, in the real MLflow UI: a copy of the tiny workspace's registry behind a real
`mlflow server`, decisions made through pipeline.registry (what `mlops promote` / `mlops rollback` run), and the
version and model pages read in headless Chromium.

The version page must show evaluation's blessing line, the accuracy, the data checksum, the lineage commit and the
approval (approver + reason) from its Decisions section; the model page the champion and its latest decision.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers_browser import browser, page_text, screenshot, wait_until
from tests.reliability.common import MlflowServer

pytestmark = pytest.mark.integration


def _copy_store(workspace_root: Path, dest: Path) -> Path:
    """The workspace's mlflow/ (sqlite + artifacts) copied to `dest`, its absolute artifact paths pointed at the copy,
    so that nothing written through the copy lands in the shared session workspace."""
    src = workspace_root / "mlflow"
    shutil.copytree(src, dest)
    old, new = str(src.resolve()), str(dest.resolve())
    with sqlite3.connect(dest / "mlflow.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [c[1] for c in db.execute(f'PRAGMA table_info("{table}")') if "CHAR" in c[2].upper()]:
                db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                    (old, new, old),
                )
    return dest


def _copy_as_new_version(client, name: str, version: int) -> str:
    """A second version from the same run (what a retrain with the same results registers), made `challenger`."""
    mv = client.get_model_version(name, str(version))
    keep = {k: v for k, v in mv.tags.items() if not k.startswith(("audit.", "promotion.", "lineage.key"))}
    new = client.create_model_version(
        name, mv.source, mv.run_id, tags=keep, model_id=mv.model_id or mv.source.removeprefix("models:/")
    )
    client.set_registered_model_alias(name, "challenger", new.version)
    return str(new.version)


def _open(driver, url: str, expect: list[str], what: str) -> str:
    """Load `url` and wait until the page shows every text in `expect`; the page's text."""

    def shown() -> str | None:
        text = page_text(driver)
        return text if all(e in text for e in expect) else None

    driver.get(url)
    return wait_until(driver, shown, 45, what)


@pytest.fixture
def registry_server(tiny_workspace, tmp_path, monkeypatch):
    """`mlflow server` on a copy of the tiny workspace's registry; MLFLOW_TRACKING_URI points the project at it."""
    server = MlflowServer(_copy_store(tiny_workspace.root, tmp_path / "mlflow"))
    server.start(timeout=90)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    yield server
    server.kill()


def test_the_version_page_tells_the_story(tiny_workspace, registry_server, tmp_path, figure):
    from pipeline.registry import promotion, registration

    name, client = tiny_workspace.model_name, registry_server.client()
    v1 = client.get_model_version(name, str(tiny_workspace.version))
    started = time.monotonic()
    # register time: a rerun of `mlops register` reuses the version of its lineage key and writes its description
    assert registration.reuse(name, v1.tags["lineage.key"])["version"] == tiny_workspace.version
    assert "**Evaluation: blessed**" in client.get_model_version(name, v1.version).description
    v2 = _copy_as_new_version(client, name, tiny_workspace.version)
    reason = "v2 reviewed on its registry page"
    promotion.approve(name, "alice", reason, reviewed=v2)

    metrics = client.get_run(v1.run_id).data.metrics
    checksum, commit = v1.tags["data.manifest_checksum"], v1.tags["git_commit"]
    accuracy = f"{metrics['eval.accuracy']:.4f}"
    assert accuracy == f"{tiny_workspace.metrics('evaluate')['accuracy']:.4f}"
    expect = ["Evaluation: blessed", accuracy, checksum, commit, f"approve by alice: {reason}"]
    with browser() as driver:
        url = f"{registry_server.url}/#/models/{name}/versions/{v2}"
        text = _open(driver, url, expect, f"the description of {name} v{v2}")
        screenshot(driver, "mlflow-version-page", also=tmp_path)
        assert f"Accuracy ({v1.tags['model.deploy_variant']}, test split): {accuracy}" in text
        assert "passed min_accuracy" in text  # each check's reason, from the run's evaluation report
        assert f"on {v1.tags['git_ref']}" in text
        assert "Decisions" in text

        promotion.rollback(name, "bob", "rolled back after the page review")
        text = _open(
            driver,
            f"{registry_server.url}/#/models/{name}",
            [f"Champion: v{v1.version}", "rollback by bob"],
            f"the description of {name}",
        )
        screenshot(driver, "mlflow-model-page", also=tmp_path)
        assert "rolled back after the page review" in text
        text = _open(
            driver,
            f"{registry_server.url}/#/models/{name}/versions/{v1.version}",
            ["approve by ci: tiny workspace fixture", "rollback by bob"],
            f"{name} v{v1.version}'s decisions",
        )
        screenshot(driver, "mlflow-version-page-rolled-back", also=tmp_path)
        assert text.index("approve by ci") < text.index(f"approve by alice: {reason}") < text.index("rollback by bob")
    figure(
        f"registry pages: register + approve + rollback described and read in Chromium in "
        f"{time.monotonic() - started:.1f}s"
    )
