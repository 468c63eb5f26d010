"""Unlabelled monitoring: traffic the model server answered, captured into `<paths.incoming>/captured/`.

A captured batch is one `.npz` (`capture-<UTC yyyymmddTHHMMSSZ>-<uuid8>.npz`): `x` uint8 (N, H, W[, C]),
`request_id` (N,) unique str, `pred` (N,) int64, `probs` (N, K) float32, `version` (N,) str, `time` (N,) float64;
no `y`. Only `x` and `request_id` are required: without `pred`/`probs` the champion scores the images.

Batch life cycle (as pipeline/monitoring/intake.py for labelled batches, same state, same idempotence):

* invalid (unreadable, arrays that disagree, duplicate request ids, failing the label-free GX image expectations)
  -> moved to `<paths.incoming>/captured/rejected/`, recorded with the reasons, not counted;
* valid -> assessed without labels (pipeline/monitoring/signals.py: input KS, class-mix PSI, low confidence), moved
  as is to the pending store `monitor.captured` (versioned with the monitor state; never trained on) where its images
  wait for labels; a drifted batch writes a labelling request (pipeline/monitoring/labelling.py) and counts towards
  an open drift (pipeline/monitoring/state.py).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from pipeline.core import io
from pipeline.core.clock import utc_now
from pipeline.core.config import Params, ValidateConfig
from pipeline.monitoring import intake, labelling, signals
from pipeline.monitoring.scoring import predict_probs
from pipeline.monitoring.state import MonitorState, note_unlabelled

CAPTURED = "captured"
REQUIRED = ("x", "request_id")
OPTIONAL = ("pred", "probs", "version", "time")


def captured_dir(params: Params) -> Path:
    """Where the model server drops captured batches: `<paths.incoming>/captured/`."""
    return Path(params.paths.incoming) / CAPTURED


def next_captured(params: Params, state: MonitorState) -> Path | None:
    """The oldest captured batch not processed yet (rejected/ and hidden files ignored); None if none."""
    return intake.oldest_new(captured_dir(params), state)


def load_capture(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a captured batch (x made 4-D); ValueError naming what is unreadable or missing."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED if k not in data.files]
            if missing:
                raise ValueError(f"missing array(s) {missing}; a captured batch holds x and request_id")
            arrays = {k: data[k] for k in (*REQUIRED, *OPTIONAL) if k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"unreadable captured batch: {exc}") from exc
    if arrays["x"].ndim == 3:
        arrays["x"] = arrays["x"][..., np.newaxis]
    return arrays


def structural_problems(arrays: dict[str, np.ndarray], num_classes: int) -> list[str]:
    """What makes the arrays not one captured batch: lengths that disagree, repeated ids, probs of the wrong width."""
    n, problems = len(arrays["x"]), []
    if n == 0:
        return ["empty captured batch: it holds no images"]
    for name, values in arrays.items():
        if len(values) != n:
            problems.append(f"{name} has {len(values)} rows but x has {n} images")
    ids = arrays["request_id"].astype(str)
    if len(set(ids)) != len(ids):
        problems.append(f"request_id repeats ({len(ids) - len(set(ids))} duplicate(s)); each image needs its own")
    probs = arrays.get("probs")
    if probs is not None and (probs.ndim != 2 or probs.shape[1] != num_classes):
        problems.append(f"probs must be (N, {num_classes}), got {probs.shape}")
    pred = arrays.get("pred")
    if pred is not None and (not np.issubdtype(pred.dtype, np.integer) or pred.min() < 0 or pred.max() >= num_classes):
        problems.append(f"pred must hold class ids 0..{num_classes - 1}")
    return problems


def validate_images(x: np.ndarray, class_names: list[str], image_shape, cfg: ValidateConfig, source: Path) -> dict:
    """The per-image GX expectations of pipeline/data/suite.py that need no labels (shape, dtype, non-finite, pixel
    stats): {"success", "rows", "statistics", "failures", "reasons"}.
    """
    from pipeline.data import suite, tables

    table = tables.with_row_ids(tables.image_rows(x, np.zeros(len(x), np.int64), split="captured"))
    checks = [e for e in suite.image_expectations(cfg, len(class_names), image_shape) if e.column != "label"]
    result = suite.check_tables({"images": table}, {"images": checks}, list(class_names), cfg.example_rows)
    reasons = (
        [] if result["success"] else [f"{source}: {len(result['failures'])} expectation(s) failed:", *result["lines"]]
    )
    return {**{k: result[k] for k in ("success", "statistics", "failures")}, "rows": len(x), "reasons": reasons}


def _load_and_validate(path: Path, profile: dict, cfg: ValidateConfig) -> tuple[dict, dict]:
    """(arrays, validation) of a captured batch; a failed validation names why."""
    class_names = profile.get("class_names") or [str(i) for i in range(int(profile["num_classes"]))]
    try:
        arrays = load_capture(path)
    except ValueError as exc:
        return {}, {"success": False, "rows": None, "statistics": {}, "failures": [], "reasons": [f"{path}: {exc}"]}
    problems = structural_problems(arrays, len(class_names))
    if problems:
        reasons = [f"{path}: {p}" for p in problems]
        return arrays, {
            "success": False,
            "rows": len(arrays["x"]),
            "statistics": {},
            "failures": [],
            "reasons": reasons,
        }
    return arrays, validate_images(arrays["x"], class_names, profile["image_shape"], cfg, path)


def check_captured(params: Params, batch_path: str | Path, champion_model, profile: dict, state: MonitorState) -> dict:
    """Process one captured batch (see the module docstring); update and save `state`; return the batch record.

    The record: {"file", "sha256", "kind": "captured", "status": "pending"|"rejected", "reasons", "validation",
    "assessment" (signals, fired), "bad", "label_request" (a drifted batch: the request's path), "moved_to", "at"};
    a repeated batch returns its first record with duplicate=True.
    """
    path = Path(batch_path)
    sha = io.sha256_file(path) if path.exists() else None
    previous = intake.previous_record(path, sha, state)
    if previous is not None:
        return {**previous, "duplicate": True}
    record: dict = {"file": path.name, "sha256": sha, "kind": CAPTURED, "at": utc_now().isoformat()}
    arrays, validation = _load_and_validate(path, profile, params.validate_)
    if not validation["success"]:
        return _record_rejected(state, params, path, record, validation)
    probs = arrays["probs"] if "probs" in arrays else predict_probs(champion_model, arrays["x"])
    pred = arrays["pred"] if "pred" in arrays else np.argmax(probs, axis=1)
    result = signals.assess_unlabelled(profile, arrays["x"], pred, probs, params.monitor)
    max_prob = np.asarray(result.pop("max_prob"))
    if result["drifted"]:
        batch = {**arrays, "file": path.name, "sha256": sha, "pred": pred}
        request = labelling.build_request(
            batch, result, max_prob, profile.get("class_names") or [], params.monitor.label_request_size, record["at"]
        )
        written = labelling.write_request(intake.state_path(state, params).parent, request)
        state.label_requests.append(labelling.summary(request, written))
        record["label_request"] = str(written)
    return _record_pending(state, params, path, record, validation, result)


def _record_pending(
    state: MonitorState, params: Params, path: Path, record: dict, validation: dict, result: dict
) -> dict:
    """Count the batch towards the unlabelled drift, record it, save the state, then move it to monitor.captured."""
    note_unlabelled(state, path.name, result["fired"], record["at"], params.monitor)
    dest = intake.destination(Path(params.monitor.captured), path, record["sha256"])
    record.update(
        {
            "status": "pending",
            "reasons": result["reasons"],
            "bad": result["drifted"],
            "consecutive_drift": state.consecutive_drift,
            "moved_to": str(dest),
            "validation": intake.summary(validation),
            "assessment": result,
        }
    )
    state.processed[record["sha256"]] = record
    state.history.append(
        {
            "at": record["at"],
            "event": "captured",
            "file": path.name,
            "fired": result["fired"],
            "signals": {s["name"]: s["value"] for s in result["signals"]},
            "consecutive_drift": state.consecutive_drift,
        }
    )
    state.save(intake.state_path(state, params))
    intake.move(path, dest)
    return record


def _record_rejected(state: MonitorState, params: Params, path: Path, record: dict, validation: dict) -> dict:
    """Record the batch as rejected (not counted), save the state, then move it to captured/rejected/."""
    dest = intake.destination(captured_dir(params) / intake.REJECTED, path, record["sha256"])
    reasons = validation["reasons"]
    record.update(
        {
            "status": "rejected",
            "reasons": reasons,
            "bad": False,
            "moved_to": str(dest),
            "validation": {**intake.summary(validation), "failures": validation.get("failures", [])},
        }
    )
    state.processed[record["sha256"]] = record
    state.history.append(
        {
            "at": record["at"],
            "event": "captured",
            "file": path.name,
            "status": "rejected",
            "reasons": record["reasons"][:3],
        }
    )
    state.save(intake.state_path(state, params))
    intake.move(path, dest)
    return record
