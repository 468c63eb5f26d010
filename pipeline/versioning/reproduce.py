"""`mlops reproduce`: rebuild a registered model version from the registry alone (git remote + DVC remote).

Clone the remote the version names, check out its lineage commit, `dvc pull`, check that `dvc status` and
`dvc repro` find nothing to do, and compare the deploy variant's sha256 with the one recorded on the version.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pipeline.core import io
from pipeline.core.config import load_params
from pipeline.core.errors import StageError
from pipeline.core.process import run_streaming, tool_env
from pipeline.registry import lineage
from pipeline.versioning.git import Git
from pipeline.versioning.workspace import Log, configure_dvc_remote

UP_TO_DATE = "Data and pipelines are up to date."


def _lineage(model_name: str, version: str, remote: str | None) -> tuple[str, str, dict]:
    """The version's commit and git remote; StageError when it has no pushed, clean commit."""
    tags = lineage.version_tags(model_name, version)
    commit, url = tags.get("git_commit"), remote or tags.get("git_remote")
    if not commit or tags.get("git_dirty") != "false":
        raise StageError(
            f"{model_name} v{version} has no clean lineage commit (git_commit={commit}, "
            f"git_dirty={tags.get('git_dirty')}): it was not committed by `mlops commit-run` or a training flow."
        )
    if not url or url == "local":
        raise StageError(f"{model_name} v{version} was committed locally only: pass --remote <clone URL>.")
    return commit, url, tags


def dvc_stale(root: Path) -> dict:
    """`dvc status --json` of the workspace: {} when every stage and data file is up to date."""
    result = subprocess.run(["dvc", "status", "--json"], cwd=root, env=tool_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise StageError(f"`dvc status` failed in {root}: {result.stderr.strip()[-1000:]}")
    return json.loads(result.stdout or "{}")


def reproduce(model_name: str, version: str, dest: Path, log: Log, remote: str | None = None) -> dict:
    """Clone, check out, pull and verify one version in `dest` (must not exist). The report; see the module."""
    commit, url, tags = _lineage(model_name, version, remote)
    if dest.exists() and any(dest.iterdir()):
        raise StageError(f"{dest} is not empty: choose a new --dest")
    subprocess.run(["git", "clone", "--quiet", url, str(dest)], check=True, capture_output=True)
    Git(dest)("checkout", "--quiet", "--detach", commit)
    if not configure_dvc_remote(dest, log):
        raise StageError("the clone has no DVC remote: commit one in .dvc/config or set $MLOPS_DVC_REMOTE")
    run_streaming(["dvc", "pull"], dest, log)
    stale = dvc_stale(dest)
    repro = run_streaming(["dvc", "repro"], dest, log) if not stale else ""  # a no-op when up to date
    params = load_params(dest / "params.yaml")
    variant = tags.get("model.deploy_variant", params.evaluate.deploy_variant)
    tflite = dest / params.paths.compressed / f"{variant}.tflite"
    digest = io.sha256_file(tflite) if tflite.is_file() else None
    report = {
        "model_name": model_name,
        "version": version,
        "commit": commit,
        "dest": str(dest),
        "up_to_date": not stale and UP_TO_DATE in repro,
        "stale": stale,
        "tflite": str(tflite.relative_to(dest)),
        "sha256": digest,
        "expected_sha256": tags.get(lineage.SHA_TAG),
    }
    report["sha256_match"] = digest is not None and digest == report["expected_sha256"]
    report["ok"] = report["up_to_date"] and report["sha256_match"]
    return report
