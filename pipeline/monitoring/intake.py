"""Monitoring loop logic (called by the scheduled flow): take the next incoming labelled batch, validate it, score the
champion on it, compare it with the training reference, and decide when to ask for retraining.

Batch life cycle (files in `monitor.incoming_dir`, `*.npz` with x: uint8 NHWC and y: labels, optional `.json` sidecar):

* invalid (unreadable, failing the per-image GX expectations of pipeline/validate.py) -> moved to
  `incoming_dir/rejected/`, recorded with the reasons, not accepted, not counted as drift;
* empty -> moved to `rejected/` and StageError("empty incoming batch <file>");
* valid -> scored and assessed (pipeline/drift.py), moved to `monitor.accepted_dir` (training data for the next
  ingest), recorded; `consecutive_bad` counts drifted-or-degraded batches in a row, a good batch resets it.

The state (`monitor.state_path`, written atomically) records every processed batch by sha256, so re-processing a
batch (same path after it was moved, or the same bytes dropped again) is a no-op that returns the first result.
The state is saved before files move; a crash in between is repaired the next time that batch is seen.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import zipfile
from pathlib import Path

import numpy as np

from pipeline.monitoring import drift

from pipeline.core import io
from pipeline.core.config import MonitorConfig, Params, ValidateConfig
from pipeline.core.errors import StageError

REJECTED = "rejected"
HISTORY_LIMIT = 1000  # most recent events kept in the state file


def _utc(now: dt.datetime | None) -> dt.datetime:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)


# --------------------------------------------------------------------------------------------- state

@dataclasses.dataclass
class MonitorState:
    """What the loop remembers between runs (JSON at cfg.state_path)."""

    consecutive_bad: int = 0
    last_trigger_at: str | None = None
    processed: dict[str, dict] = dataclasses.field(default_factory=dict)  # sha256 -> {file, status, result, ...}
    accepted: list[dict] = dataclasses.field(default_factory=list)  # [{file, sha256, count, at}]
    history: list[dict] = dataclasses.field(default_factory=list)  # recent events, oldest first
    path: Path | None = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> "MonitorState":
        """The state at `path`, or a fresh one when the file does not exist yet."""
        path = Path(path)
        if not path.is_file():
            return cls(path=path)
        try:
            raw = io.read_json(path)
            fields = {f.name for f in dataclasses.fields(cls)} - {"path"}
            return cls(**{k: v for k, v in raw.items() if k in fields}, path=path)
        except (ValueError, TypeError) as exc:
            raise StageError(f"{path}: unreadable monitor state ({exc}); fix or delete it (the loop then starts "
                             "over and may re-count batches still in the incoming directory)") from exc

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("MonitorState.save needs a path (the state was not loaded from a file)")
        self.path = path
        self.history = self.history[-HISTORY_LIMIT:]
        io.write_json(path, self.to_dict())
        return path

    def find_file(self, name: str) -> dict | None:
        """The processed record of the most recent batch that arrived as file `name`."""
        for entry in reversed(list(self.processed.values())):
            if entry["file"] == name:
                return entry
        return None


def _cfg_state_path(state: MonitorState, cfg: MonitorConfig) -> Path:
    return state.path or Path(cfg.state_path)


# --------------------------------------------------------------------------------------------- incoming

def _incoming(cfg: MonitorConfig) -> list[Path]:
    directory = Path(cfg.incoming_dir)
    if not directory.is_dir():
        return []
    files = [p for p in directory.glob("*.npz") if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def next_batch(cfg: MonitorConfig, state: MonitorState | None = None) -> Path | None:
    """The oldest (mtime, then name) .npz in cfg.incoming_dir whose content was not processed yet; None if none.

    Hidden files (atomic-write temporaries) and the rejected/ sub-directory are ignored.
    """
    state = state if state is not None else MonitorState.load(cfg.state_path)
    for path in _incoming(cfg):
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


def validate_batch(x: np.ndarray, y: np.ndarray, class_names: list[str], image_shape, *,
                   cfg: ValidateConfig | None = None, source: str | Path = "<batch>") -> dict:
    """Run the per-image GX expectations of pipeline/validate.py (labels, shape, dtype, non-finite, pixel stats) on
    one batch; return {"success", "rows", "statistics", "failures", "reasons"}. An empty batch raises StageError."""
    from pipeline.stages import validate

    cfg = cfg or ValidateConfig()
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0:
        raise StageError(f"empty incoming batch {source}: it holds no images; a batch needs at least one labelled "
                         "image (x: uint8 (N, H, W, C), y: N class ids)")
    structural = []
    if len(x) != len(y):
        structural.append(f"{source}: x has {len(x)} images but y has {len(y)} labels")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        structural.append(f"{source}: y must be a 1-D array of integer class ids, got {y.dtype} {y.shape}")
    if structural:
        return {"success": False, "rows": int(len(x)), "statistics": {}, "failures": [], "reasons": structural}
    table = validate.image_rows(x, y, split="incoming")
    table.insert(0, "row_id", np.arange(len(table), dtype=np.int64))
    suites = {"images": validate.image_expectations(cfg, len(class_names), image_shape)}
    result = validate.check_tables({"images": table}, suites, list(class_names), cfg.example_rows)
    reasons = []
    if not result["success"]:
        reasons = [f"{source}: {len(result['failures'])} expectation(s) failed on {len(x)} images:",
                   *result["lines"]]
    return {"success": result["success"], "rows": int(len(x)), "statistics": result["statistics"],
            "failures": result["failures"], "reasons": reasons}


# --------------------------------------------------------------------------------------------- scoring

def model_input(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Ingested uint8 NHWC images in the model's channel layout (as `mlops preprocess` does), as float32 0-255."""
    from pipeline.data.images import convert_channels

    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.shape[-1] != input_shape[-1]:
        x = convert_channels(x, int(input_shape[-1]))
    return x.astype(np.float32)


def predict_classes(model, x: np.ndarray) -> np.ndarray:
    """Predicted class ids of `model` (a TFLiteModel) on ingested-format images."""
    logits = model.predict(model_input(x, model.input_shape))
    return np.argmax(logits, axis=1).astype(np.int64)


def build_profile(data_dir: str | Path, champion_model, sample: int = 5000, seed: int = 0,
                  accuracy_split: str = "val") -> dict:
    """Reference profile from a seeded sample of the train split, with the champion's predictions on it.

    The profile's fallback accuracy is measured on a sample of `accuracy_split` (held out, so not optimistic like the
    train split would be); None when that split is empty or missing.
    """
    data_dir = Path(data_dir)
    manifest = io.read_json(data_dir / "manifest.json")
    num_classes = len(manifest["class_names"])
    x, _ = io.read_split(data_dir, "train")
    if len(x) == 0:
        raise StageError(f"{data_dir}: the train split is empty; cannot build a monitoring reference")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x), size=min(sample, len(x)), replace=False))
    x_ref = x[idx]
    del x
    accuracy = None
    try:
        xa, ya = io.read_split(data_dir, accuracy_split)
    except FileNotFoundError:
        xa = ya = np.zeros(0)
    if len(xa):
        ia = np.sort(rng.choice(len(xa), size=min(sample, len(xa)), replace=False))
        accuracy = float(np.mean(predict_classes(champion_model, xa[ia]) == ya[ia].astype(np.int64)))
    profile = drift.reference_profile(x_ref, predict_classes(champion_model, x_ref), num_classes,
                                      sample=len(x_ref), seed=seed, accuracy=accuracy)
    profile.update({"source": str(data_dir), "split": "train", "accuracy_split": accuracy_split if accuracy else None,
                    "class_names": list(manifest["class_names"]), "manifest_checksum": manifest.get("checksum")})
    return profile


# --------------------------------------------------------------------------------------------- the loop step

def _destination(dest_dir: Path, src: Path, sha: str) -> Path:
    """dest_dir/<name>, unless a different file already holds that name (then <stem>-<sha12>.npz)."""
    dest = dest_dir / src.name
    if dest.exists() and io.sha256_file(dest) != sha:
        dest = dest_dir / f"{src.stem}-{sha[:12]}{src.suffix}"
    return dest


def _move(src: Path, dest: Path) -> None:
    """Move the batch and its .json sidecar (if any); the .npz last, so a half-done move is repaired next time."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar = src.with_suffix(".json")
    if sidecar.is_file():
        shutil.move(str(sidecar), str(dest.with_suffix(".json")))
    shutil.move(str(src), str(dest))


def _finish_move(path: Path, entry: dict) -> None:
    """Repair after a crash between saving the state and moving the file: move it where the state says it went.
    (A copy of an already-moved batch dropped again stays where it is; next_batch skips it.)"""
    dest = Path(entry["moved_to"])
    if path.exists() and not dest.exists():
        _move(path, dest)


def check_batch(params: Params, batch_path: str | Path, champion_model, champion_accuracy: float | None,
                profile: dict, state: MonitorState) -> dict:
    """Process one incoming batch (see the module docstring); update and save `state`; return the batch record.

    The record: {"file", "sha256", "status": "accepted"|"rejected", "reasons", "validation", "assessment" (accepted
    only), "bad", "consecutive_bad", "moved_to", "at"}; a repeated batch returns its first record with duplicate=True.
    """
    cfg = params.monitor
    path = Path(batch_path)
    now = _utc(None).isoformat()

    if not path.exists():
        previous = state.find_file(path.name)
        if previous is None:
            raise StageError(f"{path}: incoming batch not found (and never processed)")
        return {**previous, "duplicate": True}
    sha = io.sha256_file(path)
    if sha in state.processed:
        previous = state.processed[sha]
        _finish_move(path, previous)
        return {**previous, "duplicate": True}

    class_names = profile.get("class_names") or [str(i) for i in range(int(profile["num_classes"]))]
    image_shape = profile["image_shape"]
    record: dict = {"file": path.name, "sha256": sha, "at": now}
    try:
        x, y = _load_batch(path)
        validation = validate_batch(x, y, class_names, image_shape, cfg=params.validate_, source=path)
    except ValueError as exc:
        validation = {"success": False, "rows": None, "statistics": {}, "failures": [], "reasons": [f"{path}: {exc}"]}
    except StageError as exc:  # empty batch: quarantine it (so the loop moves on), then surface the error
        _record_rejected(state, cfg, path, record, [str(exc)], {"success": False, "rows": 0})
        raise

    if not validation["success"]:
        return _record_rejected(state, cfg, path, record, validation["reasons"], validation)

    pred = predict_classes(champion_model, x)
    result = drift.assess(profile, x, pred, y, champion_accuracy, cfg)
    bad = result["drifted"] or result["degraded"]
    state.consecutive_bad = state.consecutive_bad + 1 if bad else 0
    dest = _destination(Path(cfg.accepted_dir), path, sha)
    record.update({"status": "accepted", "reasons": result["reasons"], "bad": bad,
                   "consecutive_bad": state.consecutive_bad, "moved_to": str(dest),
                   "validation": _summary(validation), "assessment": result})
    state.processed[sha] = record
    state.accepted.append({"file": dest.name, "sha256": sha, "count": int(len(x)), "at": now})
    state.history.append({"at": now, "event": "batch", "file": path.name, "status": "accepted", "bad": bad,
                          "drifted": result["drifted"], "degraded": result["degraded"], "psi": result["psi"],
                          "accuracy": result["accuracy"], "consecutive_bad": state.consecutive_bad})
    state.save(_cfg_state_path(state, cfg))
    _move(path, dest)
    return record


def _summary(validation: dict) -> dict:
    return {k: validation.get(k) for k in ("success", "rows", "statistics")}


def _record_rejected(state: MonitorState, cfg: MonitorConfig, path: Path, record: dict, reasons: list[str],
                     validation: dict) -> dict:
    dest = _destination(Path(cfg.incoming_dir) / REJECTED, path, record["sha256"])
    record.update({"status": "rejected", "reasons": reasons, "bad": False, "consecutive_bad": state.consecutive_bad,
                   "moved_to": str(dest), "validation": {**_summary(validation),
                                                         "failures": validation.get("failures", [])}})
    state.processed[record["sha256"]] = record
    state.history.append({"at": record["at"], "event": "batch", "file": path.name, "status": "rejected",
                          "reasons": reasons[:3]})
    state.save(_cfg_state_path(state, cfg))
    _move(path, dest)
    return record


# --------------------------------------------------------------------------------------------- retraining

def should_retrain(state: MonitorState, cfg: MonitorConfig, now: dt.datetime | None = None) -> tuple[bool, str]:
    """(True, why) when cfg.consecutive_batches bad batches in a row arrived and the cooldown has passed."""
    now = _utc(now)
    n, need = state.consecutive_bad, cfg.consecutive_batches
    if n < need:
        return False, f"{n} of {need} consecutive drifted/degraded batches"
    if state.last_trigger_at:
        last = _utc(dt.datetime.fromisoformat(state.last_trigger_at))
        elapsed = (now - last).total_seconds() / 60
        if elapsed < cfg.cooldown_minutes:
            return False, (f"{n} consecutive drifted/degraded batches, but in cooldown: retraining was triggered at "
                           f"{state.last_trigger_at}, {elapsed:.1f} of {cfg.cooldown_minutes:g} minutes ago")
    return True, f"{n} consecutive drifted/degraded batches (>= {need})"


def mark_triggered(state: MonitorState, now: dt.datetime | None = None, reason: str = "") -> MonitorState:
    """Record that retraining was requested: reset the counter and start the cooldown (the caller saves)."""
    now = _utc(now)
    state.history.append({"at": now.isoformat(), "event": "retrain", "reason": reason,
                          "consecutive_bad": state.consecutive_bad})
    state.consecutive_bad = 0
    state.last_trigger_at = now.isoformat()
    return state
