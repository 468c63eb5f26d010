"""A model version's lineage: the key that identifies what produced it, and the commit that holds it.

A version is registered without an alias. Only once its run is a commit on the git remote and its data is in
the DVC remote does it get `git_commit`/`git_dirty=false` tags and — when blessed — the `challenger` alias.
A failed push leaves it tagged `push-failed` and unaliased, so nothing unreproducible can be promoted.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import yaml

from pipeline.core import clock, io
from pipeline.core.errors import StageError
from pipeline.registry import store
from pipeline.registry.aliases import CHALLENGER

KEY_TAG = "lineage.key"
SHA_TAG = "model.sha256"
PUSH_FAILED_TAG = "push-failed"
EXPERIMENT_TAG = "experiment"
_NOT_INPUTS = ("register",)  # the registration record names the version: it is an output of the key, not an input


def lineage_key(lock_path: Path = Path("dvc.lock")) -> str | None:
    """sha256 (16 hex) over dvc.lock's stage entries — every dep, param and output hash, code included — up to
    evaluation. Two runs with the same key produced the same model from the same inputs. None without dvc.lock.
    """
    if not Path(lock_path).is_file():
        return None
    stages = (yaml.safe_load(Path(lock_path).read_text()) or {}).get("stages") or {}
    inputs = {name: entry for name, entry in stages.items() if name not in _NOT_INPUTS}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_by_key(model_name: str, key: str) -> list:
    """Every version of `model_name` registered with lineage key `key`, newest first.

    A failing search raises (an MlflowException): "not found" must never be assumed, or a retry registers twice.
    """
    found = store.client().search_model_versions(f"name = '{model_name}' and tags.`{KEY_TAG}` = '{key}'")
    return sorted(found, key=lambda mv: int(mv.version), reverse=True)


def missing_files(model_name: str, mv) -> str | None:
    """Why version `mv` is not complete (not READY, or its MLmodel, labels.json or .tflite with the registered
    sha256 do not download), or None when it is: the check before a version is reused.
    """
    import mlflow

    if mv.status != "READY":
        return f"status {mv.status}"
    with tempfile.TemporaryDirectory(prefix=f"check-v{mv.version}-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{mv.version}", dst_path=tmp))
        except Exception as exc:
            if store.unreachable(exc) is not None:  # a server that is down says nothing about the version's files
                raise
            return f"its files do not download ({type(exc).__name__}: {exc})"
        tflites = sorted(local.rglob("*.tflite"))
        if not (local / "MLmodel").is_file() or not any(local.rglob("labels.json")) or len(tflites) != 1:
            return "MLmodel, labels.json or the .tflite is missing"
        if io.sha256_file(tflites[0]) != (mv.tags or {}).get(SHA_TAG):
            return f"its .tflite does not have the registered {SHA_TAG}"
    return None


def mark_committed(model_name: str, version: str, commit: str, ref: str, remote: str | None) -> None:
    """Tag the version with the commit that holds its run (clean by construction) and where it lives."""
    client = store.client()
    tags = {"git_commit": commit, "git_dirty": "false", "git_ref": ref, "git_remote": remote or "local"}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if PUSH_FAILED_TAG in version_tags(model_name, version):  # a retried run whose earlier push failed
        client.delete_model_version_tag(model_name, version, PUSH_FAILED_TAG)
    from pipeline.registry import describe  # its page names the commit now, not "not committed yet"

    describe.describe_version(client, model_name, version)


def mark_push_failed(model_name: str, version: str, error: str) -> None:
    """Tag the version `push-failed` (with when and why); it keeps no alias."""
    store.client().set_model_version_tag(model_name, version, PUSH_FAILED_TAG, f"{clock.utc_iso()} {error}"[:5000])


def make_challenger(model_name: str, version: str) -> None:
    """Point `challenger` at the version (after its commit and data are pushed); StageError, and no alias, when the
    version is not complete (an alias only ever names a version with all of its files).
    """
    client = store.client()
    reason = missing_files(model_name, client.get_model_version(model_name, version))
    if reason is not None:
        raise StageError(f"{model_name} v{version} is incomplete ({reason}); no alias set. Rerun `mlops register`.")
    client.set_registered_model_alias(model_name, CHALLENGER, version)


def version_tags(model_name: str, version: str) -> dict[str, str]:
    """All tags of one model version."""
    return dict(store.client().get_model_version(model_name, version).tags or {})
