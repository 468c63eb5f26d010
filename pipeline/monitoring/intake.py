"""Monitoring loop logic (called by the scheduled flow): take the next incoming labelled batch, validate it, score the
champion on it and compare it with the training reference.

Batch life cycle (files in `paths.incoming`, `*.npz` with x: uint8 NHWC and y: labels, optional `.json` sidecar):

* invalid (unreadable, failing the per-image GX expectations of pipeline/data/suite.py) -> moved to
  `<paths.incoming>/rejected/`, recorded with the reasons, not accepted, not counted as drift;
* empty -> moved to `rejected/` and StageError("empty incoming batch <file>");
* valid -> scored and assessed (pipeline/monitoring/drift.py), moved to `paths.accepted` (training data for the
  next ingest), recorded; `consecutive_bad` counts drifted-or-degraded batches in a row, a good batch resets it.

The state (pipeline/monitoring/state.py, at `paths.monitor_state`) records every processed batch by sha256, so
re-processing a batch (same path after it was moved, or the same bytes dropped again) is a no-op that returns the
first result. The state is saved before files move; a crash in between is repaired the next time that batch is seen.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from pipeline.core import io
from pipeline.core.clock import utc_now
from pipeline.core.config import Params, ValidateConfig
from pipeline.core.errors import StageError
from pipeline.monitoring import drift, signals
from pipeline.monitoring.scoring import predict_classes
from pipeline.monitoring.state import MonitorState

REJECTED = "rejected"


# --------------------------------------------------------------------------------------------- incoming


def _incoming(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    files = [p for p in directory.glob("*.npz") if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def next_batch(params: Params, state: MonitorState | None = None) -> Path | None:
    """The oldest (mtime, then name) .npz in paths.incoming whose content was not processed yet; None if none.

    Hidden files (atomic-write temporaries) and the rejected/ sub-directory are ignored. Without `state`, the one
    saved at paths.monitor_state is read.
    """
    state = state if state is not None else MonitorState.load(params.paths.monitor_state)
    return oldest_new(Path(params.paths.incoming), state)


def oldest_new(directory: Path, state: MonitorState) -> Path | None:
    """The oldest .npz directly in `directory` whose content `state` has not processed yet; None if none."""
    for path in _incoming(directory):
        if io.sha256_file(path) not in state.processed:
            return path
    return None


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise ValueError(f"missing array(s) {missing}; expected x (images) and y (labels)")
            return data["x"], data["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"unreadable batch: {exc}") from exc


def _structural_problems(x: np.ndarray, y: np.ndarray, source: str | Path) -> list[str]:
    """What makes (x, y) not a labelled batch at all: mismatched lengths, labels that are not 1-D integers."""
    problems = []
    if len(x) != len(y):
        problems.append(f"{source}: x has {len(x)} images but y has {len(y)} labels")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        problems.append(f"{source}: y must be a 1-D array of integer class ids, got {y.dtype} {y.shape}")
    return problems


def validate_batch(
    x: np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    image_shape,
    *,
    cfg: ValidateConfig | None = None,
    source: str | Path = "<batch>",
) -> dict:
    """Run the per-image GX expectations of pipeline/data/suite.py (labels, shape, dtype, non-finite, pixel stats) on
    one batch; return {"success", "rows", "statistics", "failures", "reasons"}. An empty batch raises StageError.
    """
    from pipeline.data import suite, tables

    cfg = cfg or ValidateConfig()
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0:
        raise StageError(
            f"empty incoming batch {source}: it holds no images; a batch needs at least one labelled "
            "image (x: uint8 (N, H, W, C), y: N class ids)"
        )
    structural = _structural_problems(x, y, source)
    if structural:
        return {"success": False, "rows": len(x), "statistics": {}, "failures": [], "reasons": structural}
    table = tables.with_row_ids(tables.image_rows(x, y, split="incoming"))
    suites = {"images": suite.image_expectations(cfg, len(class_names), image_shape)}
    result = suite.check_tables({"images": table}, suites, list(class_names), cfg.example_rows)
    reasons = []
    if not result["success"]:
        reasons = [f"{source}: {len(result['failures'])} expectation(s) failed on {len(x)} images:", *result["lines"]]
    return {
        "success": result["success"],
        "rows": len(x),
        "statistics": result["statistics"],
        "failures": result["failures"],
        "reasons": reasons,
    }


# --------------------------------------------------------------------------------------------- files


def destination(dest_dir: Path, src: Path, sha: str) -> Path:
    """dest_dir/<name>, unless a different file already holds that name (then <stem>-<sha12>.npz)."""
    dest = dest_dir / src.name
    if dest.exists() and io.sha256_file(dest) != sha:
        dest = dest_dir / f"{src.stem}-{sha[:12]}{src.suffix}"
    return dest


def move(src: Path, dest: Path) -> None:
    """Move the batch and its .json sidecar (if any); the .npz last, so a half-done move is repaired next time."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar = src.with_suffix(".json")
    if sidecar.is_file():
        shutil.move(str(sidecar), str(dest.with_suffix(".json")))
    shutil.move(str(src), str(dest))


def _finish_move(path: Path, entry: dict) -> None:
    """Repair after a crash between saving the state and moving the file: move it where the state says it went.

    (A copy of an already-moved batch dropped again stays where it is; next_batch skips it.)
    """
    dest = Path(entry["moved_to"])
    if path.exists() and not dest.exists():
        move(path, dest)


def state_path(state: MonitorState, params: Params) -> Path:
    """Where `state` is saved: where it was loaded from, else paths.monitor_state."""
    return state.path or Path(params.paths.monitor_state)


# --------------------------------------------------------------------------------------------- the loop step


def check_batch(
    params: Params,
    batch_path: str | Path,
    champion_model,
    champion_accuracy: float | None,
    profile: dict,
    state: MonitorState,
) -> dict:
    """Process one incoming batch (see the module docstring); update and save `state`; return the batch record.

    The record: {"file", "sha256", "status": "accepted"|"rejected", "reasons", "validation", "assessment" (accepted
    only), "bad", "consecutive_bad", "moved_to", "at"}; a repeated batch returns its first record with duplicate=True.
    """
    path = Path(batch_path)
    sha = io.sha256_file(path) if path.exists() else None
    previous = previous_record(path, sha, state)
    if previous is not None:
        return {**previous, "duplicate": True}

    record: dict = {"file": path.name, "sha256": sha, "at": utc_now().isoformat()}
    try:
        x, y, validation = _load_and_validate(path, profile, params.validate_)
    except StageError as exc:  # empty batch: quarantine it (so the loop moves on), then surface the error
        _record_rejected(state, params, path, record, [str(exc)], {"success": False, "rows": 0})
        raise
    if not validation["success"]:
        return _record_rejected(state, params, path, record, validation["reasons"], validation)

    pred = predict_classes(champion_model, x)
    result = drift.assess(profile, x, pred, y, champion_accuracy, params.monitor)
    result["signals"] = signals.labelled_signals(result, params.monitor)
    result["fired"] = signals.fired(result["signals"])
    return _record_accepted(state, params, path, record, len(x), validation, result)


def previous_record(path: Path, sha: str | None, state: MonitorState) -> dict | None:
    """The record of an already processed batch (by name once moved away, else by content `sha`), repairing an
    unfinished move; None for a new batch. StageError for a missing file that was never processed.
    """
    if not path.exists():
        previous = state.find_file(path.name)
        if previous is None:
            raise StageError(f"{path}: incoming batch not found (and never processed)")
        return previous
    previous = state.processed.get(sha) if sha is not None else None
    if previous is not None:
        _finish_move(path, previous)
    return previous


def _load_and_validate(path: Path, profile: dict, cfg: ValidateConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """(x, y, validation) of the batch file; an unreadable file gives a failed validation naming why."""
    class_names = profile.get("class_names") or [str(i) for i in range(int(profile["num_classes"]))]
    try:
        x, y = _load_batch(path)
        return x, y, validate_batch(x, y, class_names, profile["image_shape"], cfg=cfg, source=path)
    except ValueError as exc:
        failed: dict = {"success": False, "rows": None, "statistics": {}, "failures": [], "reasons": [f"{path}: {exc}"]}
        return np.zeros(0), np.zeros(0), failed


def summary(validation: dict) -> dict:
    """The part of a validation result a batch record keeps."""
    return {k: validation.get(k) for k in ("success", "rows", "statistics")}


def _record_accepted(
    state: MonitorState, params: Params, path: Path, record: dict, count: int, validation: dict, result: dict
) -> dict:
    """Count the batch as bad or good, record it, save the state, then move it to paths.accepted."""
    bad = result["drifted"] or result["degraded"]
    state.consecutive_bad = state.consecutive_bad + 1 if bad else 0
    dest = destination(Path(params.paths.accepted), path, record["sha256"])
    record.update(
        {
            "status": "accepted",
            "reasons": result["reasons"],
            "bad": bad,
            "consecutive_bad": state.consecutive_bad,
            "moved_to": str(dest),
            "validation": summary(validation),
            "assessment": result,
        }
    )
    state.processed[record["sha256"]] = record
    state.accepted.append({"file": dest.name, "sha256": record["sha256"], "count": count, "at": record["at"]})
    state.history.append(
        {
            "at": record["at"],
            "event": "batch",
            "file": path.name,
            "status": "accepted",
            "bad": bad,
            "drifted": result["drifted"],
            "degraded": result["degraded"],
            "psi": result["psi"],
            "accuracy": result["accuracy"],
            "consecutive_bad": state.consecutive_bad,
        }
    )
    state.save(state_path(state, params))
    move(path, dest)
    return record


def _record_rejected(
    state: MonitorState, params: Params, path: Path, record: dict, reasons: list[str], validation: dict
) -> dict:
    """Record the batch as rejected (not counted), save the state, then move it to <paths.incoming>/rejected/."""
    dest = destination(Path(params.paths.incoming) / REJECTED, path, record["sha256"])
    record.update(
        {
            "status": "rejected",
            "reasons": reasons,
            "bad": False,
            "consecutive_bad": state.consecutive_bad,
            "moved_to": str(dest),
            "validation": {**summary(validation), "failures": validation.get("failures", [])},
        }
    )
    state.processed[record["sha256"]] = record
    state.history.append(
        {"at": record["at"], "event": "batch", "file": path.name, "status": "rejected", "reasons": reasons[:3]}
    )
    state.save(state_path(state, params))
    move(path, dest)
    return record
