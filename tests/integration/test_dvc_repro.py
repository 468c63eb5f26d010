"""Integration: the real `dvc repro` on a copy of the project, with a params override for a small subset."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers_project import FASHION_MNIST, RAW_DVC, make_project, run, small_params

pytestmark = pytest.mark.integration

SMALL = small_params("it-classifier", "it")


def _stages_with_changed_code(work: Path) -> set[str]:
    """Stages that `dvc status` reports with a changed .py dependency."""
    status = json.loads(run(["dvc", "status", "--json"], work).stdout or "{}")
    return {stage for stage, changes in status.items()
            for change in changes if isinstance(change, dict)
            for path in change.get("changed deps", {}) if path.endswith(".py")}


def _edit_reruns_exactly_its_importers(work: Path, module: str) -> set[str]:
    """Append one line to `module` in the workspace; the stages `dvc status` then lists (the file is restored)."""
    path = work / module
    original = path.read_text()
    path.write_text(original + "# a one-line edit\n")
    try:
        return _stages_with_changed_code(work)
    finally:
        path.write_text(original)


def test_dvc_repro_registers_a_challenger_and_reruns_only_what_changed(tmp_path, figure):
    import mlflow

    from tests.import_closure import code_deps

    assert FASHION_MNIST is not None, "needs the Fashion-MNIST files: run `make dataset`"
    work = make_project(tmp_path, SMALL)
    first = run(["dvc", "repro"], work)
    for stage in ("ingest", "validate", "preprocess", "train", "compress", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout, first.stdout

    record = json.loads((work / "reports/registration.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow/mlflow.db'}")
    assert record["alias"] is None and not client.get_registered_model("it-classifier").aliases, record

    # the run becomes a commit on runs/<name> (pushed to a git remote, data to a DVC remote), then challenger
    bare, store = tmp_path / "remote.git", tmp_path / "dvc-store"
    run(["git", "clone", "-q", "--bare", str(work), str(bare)], tmp_path)
    run(["git", "remote", "add", "origin", f"file://{bare}"], work)
    run(["dvc", "remote", "add", "-d", "store", str(store)], work)
    head = run(["git", "rev-parse", "HEAD"], work).stdout.strip()
    committed = json.loads(run(["mlops", "commit-run", "--name", "it", "--remote", "origin"], work).stdout.splitlines()[-1])
    version = client.get_model_version_by_alias("it-classifier", "challenger")
    assert int(version.version) == record["version"] and committed["alias"] == "challenger"
    assert version.tags["git_commit"] == committed["commit"] != head and version.tags["git_dirty"] == "false"
    assert run(["git", "rev-parse", "HEAD"], work).stdout.strip() == head, "the checked-out branch did not move"
    assert run(["git", "-C", str(bare), "rev-parse", "runs/it"], tmp_path).stdout.strip() == committed["commit"]
    again_commit = run(["mlops", "commit-run", "--name", "it-again", "--remote", "origin"], work)
    assert "already commit" in again_commit.stdout, again_commit.stdout  # same tree: no second commit
    # rebuilt from the registry alone: clone, checkout, dvc pull, dvc repro up to date, same .tflite bytes
    rebuilt = run(["mlops", "reproduce", "1", "--dest", str(tmp_path / "rebuilt")], work,
                  {"MLOPS_DVC_REMOTE": str(store)})
    report = json.loads(rebuilt.stdout[rebuilt.stdout.index("{\n"):])
    assert report["ok"] and report["up_to_date"] and report["sha256"] == version.tags["model.sha256"], report
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert {f"dvc.{s}" for s in ("ingest", "validate", "preprocess", "train", "compress", "evaluate")} <= set(version.tags)
    assert version.tags["data.gx_success"] == "true"
    assert set(lock) >= {"ingest", "train", "evaluate"}
    # the raw input is a committed, checksum-pinned DVC output: dvc.lock records exactly the pinned bytes
    pin = yaml.safe_load((work / RAW_DVC).read_text())["outs"][0]["md5"]
    raw_deps = [d for d in lock["ingest"]["deps"] if d["path"] == "data/raw/fashion-mnist"]
    assert [d["md5"] for d in raw_deps] == [pin], lock["ingest"]["deps"]
    for name in ("fp32", "fp16", "dynamic", "int8"):
        assert (work / "models/compressed" / f"{name}.tflite").is_file()

    again = run(["dvc", "repro"], work)
    assert "Data and pipelines are up to date." in again.stdout, again.stdout

    # a one-line edit to a shared module makes DVC see exactly the stages whose code imports it
    assert _edit_reruns_exactly_its_importers(work, "pipeline/ml/plots.py") == {"train", "evaluate"}
    assert _edit_reruns_exactly_its_importers(work, "pipeline/ml/conversion.py") == {"compress", "evaluate"}
    for module in ("pipeline/core/io.py", "pipeline/data/images.py", "pipeline/registry/store.py"):
        expected = {stage for stage in ("ingest", "validate", "preprocess", "train", "compress", "evaluate",
                                        "register") if module in code_deps(stage)}
        assert expected and _edit_reruns_exactly_its_importers(work, module) == expected, module
    assert _stages_with_changed_code(work) == set()

    # a train-only change reruns train → register; here it also switches the Keras backend: the rest of the
    # pipeline (TensorFlow: pruning, TFLite conversion, evaluation) takes a JAX model trained in mixed bfloat16
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"].update(epochs=4, backend="jax", precision="mixed_bfloat16")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    changed = run(["dvc", "repro"], work)
    wall = time.perf_counter() - started
    ran = {s for s in ("ingest", "validate", "preprocess", "train", "compress", "evaluate", "register")
           if f"Running stage '{s}'" in changed.stdout}
    assert ran == {"train", "compress", "evaluate", "register"}, changed.stdout
    registered = json.loads((work / "reports/registration.json").read_text())
    assert registered["version"] == record["version"] + 1
    trained = json.loads((work / "metrics/train.json").read_text())
    assert (trained["backend"], trained["precision"], trained["device"]) == ("jax", "mixed_bfloat16", "cpu")
    tags = client.get_run(registered["run_id"]).data.tags
    assert (tags["train.backend"], tags["train.precision"], tags["train.device"]) == ("jax", "mixed_bfloat16", "cpu")
    evaluation = json.loads((work / "metrics/evaluate.json").read_text())
    figure(f"train.backend=jax, precision=mixed_bfloat16 (CPU): `dvc repro` train→compress→evaluate→register "
           f"{wall:.0f} s, {trained['images_per_second']} images/s, {evaluation['deploy_variant']} accuracy "
           f"{evaluation['accuracy']:.4f} ({trained['train_samples']} train images, {trained['epochs']} epochs)")
    assert evaluation["accuracy"] >= SMALL["evaluate"]["min_accuracy"]


def test_invalid_data_stops_the_pipeline_at_validate(tmp_path):
    from PIL import Image

    source = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split, counts in (("train", {"cat": 40, "dog": 8}), ("test", {"cat": 5, "dog": 5})):
        for cls, n in counts.items():
            (source / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(30, 220, (12, 12), dtype=np.uint8)).save(source / split / cls / f"{i}.png")
    override = {"ingest": {"dataset": "image-folder", "source": str(source), "image_size": [12, 12]}}
    work = make_project(tmp_path, override)
    result = run(["dvc", "repro"], work, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "expect_column_values_to_be_between" in output and "ratio_to_uniform" in output, output[-3000:]
    assert "Running stage 'preprocess'" not in output
    assert not (work / "data/prepared").exists()
    assert json.loads((work / "reports/validation.json").read_text())["success"] is False
