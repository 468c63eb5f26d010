"""The one loader of a registered model (by alias or version): .tflite bytes, class names, metrics and lineage.

Evaluation (champion vs challenger), deployment, the model server and the monitor all load the served model
through `load_by_alias`, so they agree on what "the champion" is and on how its files are found.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import io
from pipeline.core.errors import StageError
from pipeline.registry import store
from pipeline.registry.aliases import CHAMPION


class IncompleteVersion(StageError):
    """A registered version lacks a file it needs to be served (its .tflite or labels.json)."""

    def __init__(self, message: str, version: str):
        super().__init__(message)
        self.version = version


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model version as served: the .tflite bytes plus what the registry says about it."""

    model_name: str
    alias: str
    version: str
    tflite: bytes = field(repr=False)
    labels: list[str]
    metrics: dict  # eval.* version tags, numbers where numeric (accuracy, blessed, ...)
    lineage: dict  # every other version tag, plus run_id and source
    run_id: str | None = None

    @property
    def sha256(self) -> str:
        """Hex sha256 of the .tflite bytes."""
        return io.sha256_bytes(self.tflite)

    @property
    def accuracy(self) -> float | None:
        """Test accuracy recorded at registration (the eval.accuracy tag), None when absent."""
        value = self.metrics.get("accuracy")
        return value if isinstance(value, float) else None

    def model(self, num_threads: int | None = None):
        """A fresh TFLiteModel (interpreter) over the .tflite bytes."""
        from pipeline.ml.tflite import TFLiteModel

        return TFLiteModel(self.tflite, num_threads=num_threads)


def split_version_tags(mv) -> tuple[dict, dict]:
    """Split model-version tags into metrics (eval.* → numbers where numeric) and lineage (everything else)."""
    metrics: dict[str, object] = {}
    lineage: dict[str, object] = {}
    for key, value in sorted((mv.tags or {}).items()):
        if key.startswith("eval."):
            try:
                metrics[key[len("eval.") :]] = float(value)
            except (TypeError, ValueError):
                metrics[key[len("eval.") :]] = value
        else:
            lineage[key] = value
    lineage.setdefault("run_id", getattr(mv, "run_id", None))
    lineage.setdefault("source", getattr(mv, "source", None))
    return metrics, lineage


def find_labels(tflite: Path, root: Path) -> list[str]:
    """The class names logged beside `tflite` (labels.json) in a downloaded model; StageError when absent."""
    for path in (tflite.parent / "labels.json", *sorted(root.rglob("labels.json"))):
        if path.is_file():
            labels = json.loads(path.read_text())
            if isinstance(labels, list) and labels:
                return [str(x) for x in labels]
    raise StageError(
        f"no labels.json next to {tflite.name} in the registered model; was it logged by "
        "`mlops register` (pyfunc artifact 'labels')?"
    )


def _fetch(model_name: str, mv, name: str, tmp: Path) -> tuple[Path, list[str]]:
    """Download version `mv`'s .tflite into `tmp` and find its labels; `name` (e.g. "m@alias") names it in errors."""
    tflite = store.download_tflite(model_name, str(mv.version), tmp)
    if tflite is None:
        raise IncompleteVersion(
            f"{name} (v{mv.version}) has no .tflite artifact; was it registered by `mlops register`?", str(mv.version)
        )
    try:
        return tflite, find_labels(tflite, tmp)
    except StageError as exc:
        raise IncompleteVersion(f"{name} (v{mv.version}): {exc}", str(mv.version)) from None


def _registered(model_name: str, alias: str, mv, data: bytes, labels: list[str]) -> RegisteredModel:
    metrics, lineage = split_version_tags(mv)
    return RegisteredModel(
        model_name, alias, str(mv.version), data, labels, metrics, lineage, run_id=getattr(mv, "run_id", None)
    )


def load_version(model_name: str, version: str) -> RegisteredModel:
    """Version `version` of `model_name` with its files; StageError when the registry has no such version."""
    from mlflow.exceptions import MlflowException

    try:
        mv = store.client().get_model_version(model_name, version)
    except MlflowException as exc:
        raise StageError(f"{model_name} v{version}: not in the registry at {store.tracking_uri()} ({exc})") from None
    with tempfile.TemporaryDirectory(prefix=f"v{version}-") as tmp:
        tflite, labels = _fetch(model_name, mv, model_name, Path(tmp))
        return _registered(model_name, "", mv, tflite.read_bytes(), labels)


def load_by_alias(model_name: str, alias: str = CHAMPION, attempts: int = 3) -> RegisteredModel | None:
    """`model_name@alias` with its files, or None when the model or the alias does not exist.

    The alias may move between the look-up and the download: the download is retried until the alias names
    the same version before and after it. StageError when the version lacks its .tflite or labels.json.
    """
    for _ in range(attempts):
        mv = store.version_by_alias(model_name, alias)
        if mv is None:
            return None
        with tempfile.TemporaryDirectory(prefix=f"{alias}-") as tmp:
            tflite, labels = _fetch(model_name, mv, f"{model_name}@{alias}", Path(tmp))
            now = store.version_by_alias(model_name, alias)
            if now is None or str(now.version) != str(mv.version):
                continue
            return _registered(model_name, alias, mv, tflite.read_bytes(), labels)
    raise StageError(f"{model_name}@{alias} kept moving while it was being downloaded; try again.")
