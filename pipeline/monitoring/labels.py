"""Labels join later: attach labels to captured images (by request id) waiting in the pending store.

Labels come from `mlops label` (a CSV with columns request_id,label, or one pair on the command line) or from a
file dropped into `<paths.incoming>/labels/` (CSV, or JSON: {"<request_id>": label} or [{"request_id", "label"}])
that the monitor flow picks up. A label is a class index or a class name of the model's training data.

Applying is all or nothing: unknown request ids (not pending: never captured, or already labelled), unknown labels
or one id given two labels raise StageError naming them, and nothing changes. Otherwise the labelled images leave
`monitor.captured` and are written as one accepted batch `paths.accepted/labelled-<digest>.npz` (x, y,
request_id) - the path `ingest` reads, so they join the next training data version - and the state counts them
(`new_labels`, towards `monitor.min_new_labels`). The accepted file is written first and its name is a digest of
the labels, so a run interrupted before the pending store was rewritten is repaired by applying the same labels.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.core import io
from pipeline.core.clock import utc_now
from pipeline.core.config import Params
from pipeline.core.errors import StageError
from pipeline.monitoring import intake
from pipeline.monitoring.state import MonitorState

LABELS = "labels"
APPLIED = "applied"
Uploader = Callable[[Params, str, Path], str]  # (params, s3://bucket/prefix/, local file) -> the URL written


def read_label_file(path: Path) -> list[tuple[str, str]]:
    """(request_id, label) pairs of a .csv (header request_id,label) or .json label file; StageError if malformed."""
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
            rows = raw.items() if isinstance(raw, dict) else ((r["request_id"], r["label"]) for r in raw)
            return [(str(i), str(label)) for i, label in rows]
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not {"request_id", "label"} <= set(reader.fieldnames or []):
                raise ValueError(f"needs the columns request_id,label; found {reader.fieldnames}")
            return [(row["request_id"].strip(), row["label"].strip()) for row in reader]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageError(f"{path}: unreadable label file ({exc})") from exc


def parse_labels(pairs: list[tuple[str, str]], class_names: list[str]) -> dict[str, int]:
    """{request_id: class id}; a label is a class index or name. StageError naming unknown labels or conflicts."""
    by_name = {name: i for i, name in enumerate(class_names)}
    out: dict[str, int] = {}
    unknown, conflicts = [], []
    for request_id, label in pairs:
        value = by_name.get(label, int(label) if label.isdigit() and int(label) < len(class_names) else None)
        if value is None:
            unknown.append(f"{request_id}: {label!r}")
        elif out.setdefault(request_id, value) != value:
            conflicts.append(request_id)
    if unknown or conflicts:
        problems = [f"unknown label(s) {unknown}"] if unknown else []
        problems += [f"request id(s) {conflicts} given two different labels"] if conflicts else []
        raise StageError(
            f"{'; '.join(problems)} (labels are class indexes 0..{len(class_names) - 1} or names {class_names}). "
            "Nothing was applied."
        )
    if not out:
        raise StageError("no labels given; nothing was applied")
    return out


def pending_index(pending_dir: Path) -> dict[str, tuple[Path, int]]:
    """{request_id: (captured file, row)} of every image waiting in the pending store."""
    index: dict[str, tuple[Path, int]] = {}
    for path in sorted(Path(pending_dir).glob("*.npz")) if Path(pending_dir).is_dir() else []:
        with np.load(path, allow_pickle=False) as data:
            for row, request_id in enumerate(data["request_id"].astype(str)):
                index[request_id] = (path, row)
    return index


def _accepted_batch(labels: dict[str, int], index: dict[str, tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(x 4-D, y) of the labelled images, in the order of `labels`."""
    rows: dict[Path, list[int]] = {}
    for request_id in labels:
        path, row = index[request_id]
        rows.setdefault(path, []).append(row)
    images: dict[str, np.ndarray] = {}
    for path, wanted in rows.items():
        with np.load(path, allow_pickle=False) as data:
            x, ids = data["x"], data["request_id"].astype(str)
        x = x[..., np.newaxis] if x.ndim == 3 else x
        images.update({ids[r]: x[r] for r in wanted})
    return np.stack([images[i] for i in labels]), np.array(list(labels.values()), np.int64)


def _drop_rows(path: Path, request_ids: set[str]) -> None:
    """Rewrite a pending file without the rows of `request_ids` (atomically); delete it when nothing is left."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    keep = ~np.isin(arrays["request_id"].astype(str), list(request_ids))
    if not keep.any():
        path.unlink()
        return
    with io.atomic_path(path) as tmp:
        np.savez_compressed(tmp, **{k: v[keep] for k, v in arrays.items()})


def apply_labels(
    params: Params, pairs: list[tuple[str, str]], class_names: list[str], state: MonitorState, source: str
) -> dict:
    """Join `pairs` (request_id, label) to pending captured images (see the module docstring); save `state`.

    Reads and rewrites `monitor.captured`, writes `paths.accepted/labelled-<digest>.npz`; returns {"labelled",
    "accepted", "source"}.
    """
    labels = parse_labels(pairs, class_names)
    index = pending_index(Path(params.monitor.captured))
    missing = [i for i in labels if i not in index]
    if missing:
        shown = missing[:20] + ([f"... {len(missing) - 20} more"] if len(missing) > 20 else [])
        raise StageError(
            f"{len(missing)} request id(s) are not waiting for labels in {params.monitor.captured} (never captured, "
            f"or already labelled): {shown}. Nothing was applied."
        )
    x, y = _accepted_batch(labels, index)
    digest = hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]
    dest = Path(params.paths.accepted) / f"labelled-{digest}.npz"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(dest) as tmp:
        np.savez_compressed(tmp, x=x, y=y, request_id=np.array(list(labels), dtype=str))
    for path in {index[i][0] for i in labels}:
        _drop_rows(path, set(labels))
    at = utc_now().isoformat()
    state.new_labels += len(labels)
    state.accepted.append({"file": dest.name, "sha256": io.sha256_file(dest), "count": len(labels), "at": at})
    state.history.append({"at": at, "event": "labels", "source": source, "labelled": len(labels), "file": dest.name})
    state.save(intake.state_path(state, params))
    return {"labelled": len(labels), "accepted": str(dest), "source": source, "new_labels": state.new_labels}


def labels_dir(params: Params) -> Path:
    """Where label files are dropped for the monitor: `<paths.incoming>/labels/`."""
    return Path(params.paths.incoming) / LABELS


def apply_label_drops(params: Params, class_names: list[str], state: MonitorState) -> list[dict]:
    """Apply every label file in `<paths.incoming>/labels/` (oldest first); move each to labels/applied/ or, when
    refused, labels/rejected/ (its result names the error). Returns one result per file.
    """
    directory = labels_dir(params)
    files = (
        sorted(
            (p for p in directory.glob("*") if p.suffix in (".csv", ".json") and not p.name.startswith(".")),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
        )
        if directory.is_dir()
        else []
    )
    results = []
    for path in files:
        try:
            result = apply_labels(params, read_label_file(path), class_names, state, source=path.name)
            where = APPLIED
        except StageError as exc:
            result, where = {"source": path.name, "error": str(exc)}, intake.REJECTED
        dest = intake.destination(directory / where, path, io.sha256_file(path))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(dest))
        results.append(result)
    return results


def post_labels(
    params: Params, pairs: list[tuple[str, str]], class_names: list[str] | None, upload: Uploader | None
) -> str:
    """Send labels to the monitor instead of applying them here, as one `labels-<UTC>-<id>.json` ({request_id: class
    index}): into `<monitor.inbox>/labels/` through `upload` (S3; what a deployment's monitor reads), else into
    `<paths.incoming>/labels/`. The next monitor run joins them. Labels are checked against `class_names` when
    known; request ids only the monitor can check (it refuses a file naming unknown ones, nothing applied).
    """
    import tempfile
    import uuid

    if not pairs:
        raise StageError("no labels to post")
    if class_names:
        labels = parse_labels(pairs, class_names)
    elif all(value.isdigit() for _, value in pairs):
        labels = {request_id: int(value) for request_id, value in pairs}
    else:
        raise StageError("without the class names (paths.ingested/manifest.json) labels must be class indices")
    name = f"labels-{utc_now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.json"
    if params.monitor.inbox is None:
        io.write_json(labels_dir(params) / name, labels)
        return str(labels_dir(params) / name)
    if upload is None:
        raise StageError("monitor.inbox is an S3 URI but this command has no S3 uploader")
    with tempfile.TemporaryDirectory(prefix="labels-") as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(labels))
        return upload(params, f"{params.monitor.inbox.rstrip('/')}/{LABELS}/", path)
