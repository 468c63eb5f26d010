"""Batch prediction on image files: `mlops predict PATH…` — image files in, a CSV of labels out.

Files are decoded exactly as the ingest stage decodes an image folder (`pipeline.data.image_folder.load_image`:
converted to L or RGB, resized bilinearly) to the registered model's own input shape (H, W, C), then run through
the registered .tflite (the deploy variant, as `mlops register` logged it) in batches. Labels are the model's
registered labels.json. A file that cannot be classified (not .png/.jpg/.jpeg, truncated, empty, not an image)
gets a row with an error and no label; every other file is still classified.

CSV columns: path, label, probability (softmax of the chosen class), error (empty when classified).
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.core import io
from pipeline.core.errors import StageError
from pipeline.data.image_folder import EXTENSIONS, load_image
from pipeline.ml.tflite import TFLiteModel, softmax
from pipeline.registry import store
from pipeline.registry.aliases import CHAMPION
from pipeline.registry.champion import RegisteredModel, load_by_alias, load_version

COLUMNS = ("path", "label", "probability", "error")
STDOUT = Path("-")
_STREAM_REPR = re.compile(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class Row:
    """One CSV row: a classified file (label, probability) or a failed one (error)."""

    path: str
    label: str = ""
    probability: float | None = None
    error: str = ""

    def cells(self) -> list[str]:
        """The row as CSV cells, in COLUMNS order."""
        probability = "" if self.probability is None else f"{self.probability:.6f}"
        return [self.path, self.label, probability, self.error]


@dataclass(frozen=True)
class Summary:
    """What `run` did: the model used, how many files it saw and how many failed."""

    model: RegisteredModel
    files: int
    failed: int
    output: Path


def _walk(folder: Path) -> Iterator[Path]:
    """Every file under `folder`, recursively, in sorted order; hidden entries (.name) skipped, as ingest does."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / n for n in sorted(names) if not n.startswith("."))


def collect(paths: Sequence[Path]) -> list[Path]:
    """The files named by `paths` (folders walked recursively), in order, each once.

    FileNotFoundError for a path that does not exist; StageError when there is nothing to classify.
    """
    files: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            files.update(dict.fromkeys(_walk(path)))
        elif path.exists():
            files[path] = None
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not files:
        raise StageError(f"no files to classify under {', '.join(map(str, paths))}")
    return list(files)


def load_model(model_name: str, alias: str | None = None, version: str | None = None) -> RegisteredModel:
    """`model_name` version `version`, else `model_name@alias` (default champion); StageError when absent."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr: our own progress bar only
    if version is not None:
        return load_version(model_name, version)
    alias = alias or CHAMPION
    found = load_by_alias(model_name, alias)
    if found is None:
        raise StageError(
            f"no {model_name}@{alias} in the registry at {store.tracking_uri()}; register and approve a model "
            "first (`mlops register`, `mlops promote --approve`), or pick one with --alias/--version"
        )
    return found


def _reason(path: Path, exc: Exception) -> str:
    """The message of `exc` without the leading 'path: ' (the path column says it) or PIL's in-memory stream repr."""
    return _STREAM_REPR.sub("", str(exc).removeprefix(f"{path}: "))


def _load(path: Path, shape: tuple[int, ...]) -> np.ndarray | Row:
    """`path` decoded as ingest decodes it, to the (H, W, C) `shape`; a failed Row when it cannot be."""
    if not path.name.lower().endswith(EXTENSIONS):
        return Row(str(path), error=f"not an image file (expected {', '.join(EXTENSIONS)})")
    try:
        return load_image(path, (shape[0], shape[1]), shape[2])[0]
    except StageError as exc:
        return Row(str(path), error=_reason(path, exc))
    except Exception as exc:  # noqa: BLE001 - PIL may raise anything on a malformed file: that file fails, not the run
        return Row(str(path), error=f"cannot read image ({type(exc).__name__}: {exc})")


def _decode(paths: Sequence[Path], shape: tuple[int, ...]) -> tuple[list[Path], np.ndarray, list[Row]]:
    """Decode `paths` (threads: PIL releases the GIL): the files that decoded, their pixels, a Row per failure."""
    with ThreadPoolExecutor(min(8, (os.cpu_count() or 1) + 2)) as pool:
        loaded = list(pool.map(_load, paths, repeat(shape)))
    good = [path for path, item in zip(paths, loaded, strict=True) if not isinstance(item, Row)]
    pixels = [item for item in loaded if not isinstance(item, Row)]
    failed = [item for item in loaded if isinstance(item, Row)]
    return good, np.stack(pixels) if pixels else np.zeros((0, *shape), np.uint8), failed


def classify(model: TFLiteModel, labels: list[str], paths: Sequence[Path], batch_size: int) -> list[Row]:
    """One Row per path in `paths` (same order): label and probability, or the reason it failed."""
    good, x, failed = _decode(paths, model.input_shape)
    rows = {row.path: row for row in failed}
    if len(x):
        probs = softmax(model.predict(x, batch_size))
        best = probs.argmax(axis=1)
        for path, k, p in zip(good, best, probs[np.arange(len(best)), best], strict=True):
            rows[str(path)] = Row(str(path), labels[int(k)], float(p))
    return [rows[str(path)] for path in paths]


def _check_labels(model: TFLiteModel, registered: RegisteredModel) -> None:
    """StageError when the model's number of outputs differs from its registered labels."""
    outputs = model.predict(np.zeros((1, *model.input_shape), np.float32), 1).shape[1]
    if outputs != len(registered.labels):
        raise StageError(
            f"{registered.model_name} v{registered.version}: {outputs} outputs but {len(registered.labels)} labels"
        )


def predict_rows(
    registered: RegisteredModel, files: Sequence[Path], batch_size: int, progress: Callable[[int], object]
) -> Iterator[Row]:
    """Rows for `files`, classified `batch_size` files at a time (memory stays bounded); `progress(n)` per batch."""
    model = registered.model()
    _check_labels(model, registered)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        yield from classify(model, registered.labels, chunk, batch_size)
        progress(len(chunk))


@contextmanager
def _open_output(output: Path) -> Iterator[TextIO]:
    """A text stream to write the CSV to: stdout for `-`, else a temp file renamed over `output` on success."""
    if output == STDOUT:
        yield sys.stdout
        return
    with io.atomic_path(output) as tmp, open(tmp, "w", newline="") as fh:
        yield fh


def write_csv(rows: Iterable[Row], output: Path) -> int:
    """Write the header and `rows` to `output` (`-`: stdout); the number of rows that carry an error."""
    failed = 0
    with _open_output(output) as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(row.cells())
            failed += bool(row.error)
    return failed


def run(
    model_name: str,
    paths: Sequence[Path],
    output: Path,
    *,
    alias: str | None = None,
    version: str | None = None,
    batch_size: int = 256,
) -> Summary:
    """Classify every image file under `paths` with a registered model and write the CSV.

    Reads: the files/folders in `paths` and the registry (the champion unless `alias` or `version` is given).
    Writes: `output` (atomically; `-` = stdout), one row per file, in the order the files were found.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise StageError(f"--batch-size must be >= 1, got {batch_size}")
    files = collect(paths)
    registered = load_model(model_name, alias, version)
    with tqdm(total=len(files), desc="predict", unit="img", disable=not sys.stderr.isatty()) as bar:
        failed = write_csv(predict_rows(registered, files, batch_size, bar.update), output)
    return Summary(registered, len(files), failed, output)
