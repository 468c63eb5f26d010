"""Image-folder reader: source/train/<class>/*.png|jpg|jpeg|gif|bmp|webp and optional source/test/<class>/*.

The layout keras.utils.image_dataset_from_directory reads. Class names are the sorted sub-directory names
of train/. Every image is converted to L or RGB (alpha is dropped, palettes expanded, 16-bit scaled, the first
frame of an animation) and resized with bilinear filtering to `image_size` (H, W). Decoding runs in a process pool
for large folders (small images are bound by PIL's per-file Python overhead) and in a thread pool otherwise.

The whole folder is always read: a file that cannot be used (pipeline/data/folder_scan.py says why) never stops
the others. `on_bad_file="fail"` then raises one error naming every bad file; `"skip"` leaves them out and lists
them in `ImageFolderDataset.skipped`. OS junk (dot-files, Thumbs.db, desktop.ini, __MACOSX/) is ignored silently.
Source files are only ever read.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pipeline.core.errors import DatasetError
from pipeline.data.dataset import RawDataset
from pipeline.data.folder_scan import EXTENSIONS, BadFile, bad_files_error, decode_failure, list_split

__all__ = [
    "EXTENSIONS",
    "ImageDecodeError",
    "ImageFolderDataset",
    "ImageTooLargeError",
    "decode_image",
    "load_image",
    "read_image_folder",
]

_CHUNK = 512
PROCESS_MIN_FILES = 4096  # below this, process start-up costs more than it saves


@dataclass(frozen=True)
class ImageFolderDataset(RawDataset):
    """A RawDataset read from an image folder, with the bad files left out under `on_bad_file="skip"`."""

    skipped: tuple[BadFile, ...] = ()


class ImageDecodeError(ValueError):
    """Bytes that PIL cannot decode as an image (corrupt, truncated or not an image)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose pixel count exceeds the caller's `max_pixels` (checked before decoding)."""


def decode_image(data: bytes, size: tuple[int, int], channels: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to uint8 (H, W, channels): the one decode path of the project.

    Converted to L or RGB (alpha dropped, palettes expanded, 16-bit grey scaled) and resized bilinearly to `size`
    (H, W). Ingest (`load_image`), `mlops predict` and the model server all decode through here.

    Raises:
        ImageTooLargeError: the image has more than `max_pixels` pixels (when given); nothing was decoded.
        ImageDecodeError: the bytes cannot be decoded as an image.
    """
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if max_pixels is not None and opened.width * opened.height > max_pixels:
                raise ImageTooLargeError(
                    f"image of {opened.width}×{opened.height} pixels exceeds the limit of {max_pixels} pixels"
                )
            opened.load()
            im: Image.Image = opened
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: scale, don't clip
                im = Image.fromarray((np.asarray(im, dtype=np.int64) // 257).clip(0, 255).astype(np.uint8))
            elif im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode != mode:
                im = im.convert(mode)
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        message = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))  # PIL names the buffer
        raise ImageDecodeError(message or type(exc).__name__) from exc
    return arr.reshape(size[0], size[1], channels)


def load_image(path: Path, size: tuple[int, int], channels: int) -> tuple[np.ndarray, str]:
    """Decode one image file (`decode_image`) to uint8 (H, W, channels) and return it with the file's sha256.

    DatasetError naming the file if it cannot be read or decoded.
    """
    try:
        data = path.read_bytes()
        arr = decode_image(data, size, channels)
    except (OSError, ImageDecodeError) as exc:
        raise DatasetError(
            f"{path}: cannot read image ({exc}); the file is corrupt or not an image: replace or remove it"
        ) from exc
    return arr, hashlib.sha256(data).hexdigest()


def _decode_file(path: Path, rel: str, size: tuple[int, int], channels: int) -> tuple[np.ndarray, str] | BadFile:
    """(pixels, file sha256) of one image file, or a BadFile saying why it cannot be used. Never raises for a bad
    file: one broken image must not stop the rest of the folder (or of its pool chunk).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        if path.is_symlink() and not path.exists():
            return BadFile(rel, "unreadable", f"unreadable file: a broken symbolic link to {os.readlink(path)}")
        return BadFile(rel, "unreadable", f"unreadable file ({exc.strerror or exc})")
    if not data:
        return BadFile(rel, "empty", "empty file (0 bytes)")
    try:
        arr = decode_image(data, size, channels)
    except Exception as exc:  # noqa: BLE001 - PIL may raise anything on a malformed file: that file fails, not the run
        return decode_failure(rel, data, exc)
    return arr, hashlib.sha256(data).hexdigest()


def _decode_chunk(
    paths: list[Path], rels: list[str], size: tuple[int, int], channels: int
) -> tuple[np.ndarray, list[str], list[tuple[int, BadFile]]]:
    """Decode a chunk: pixels (a bad file's row is left unset), sha256s ("" for bad files), (index, BadFile)s."""
    out = np.empty((len(paths), size[0], size[1], channels), dtype=np.uint8)
    digests, bad = [], []
    for i, (path, rel) in enumerate(zip(paths, rels, strict=True)):
        result = _decode_file(path, rel, size, channels)
        if isinstance(result, BadFile):
            bad.append((i, result))
            digests.append("")
        else:
            out[i], digest = result
            digests.append(digest)
    return out, digests, bad


def _pool(n_files: int) -> Executor:
    """Processes for big jobs (small images are bound by PIL's Python overhead, i.e. the GIL), else threads."""
    cpus = os.cpu_count() or 1
    if n_files >= PROCESS_MIN_FILES and cpus > 1:
        import multiprocessing

        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        return ProcessPoolExecutor(min(cpus, 16), mp_context=multiprocessing.get_context(method))
    return ThreadPoolExecutor(min(8, cpus + 2))


def _load_all(
    paths: list[Path], rels: list[str], size: tuple[int, int], channels: int, desc: str
) -> tuple[np.ndarray, list[str], dict[int, BadFile]]:
    """Decode `paths` in parallel into one preallocated uint8 array (order kept); also file sha256s and the bad
    files by index (their rows are unset).
    """
    from tqdm import tqdm

    out = np.empty((len(paths), size[0], size[1], channels), dtype=np.uint8)
    digests: list[str] = []
    bad: dict[int, BadFile] = {}
    chunks = range(0, len(paths), _CHUNK)
    disable = len(paths) < 2000 or not sys.stderr.isatty()
    pool = _pool(len(paths))
    with pool, tqdm(total=len(paths), desc=desc, unit="img", disable=disable) as bar:
        try:
            results = pool.map(
                _decode_chunk,
                [paths[i : i + _CHUNK] for i in chunks],
                [rels[i : i + _CHUNK] for i in chunks],
                repeat(size),
                repeat(channels),
            )
            for x, d, b in results:
                bad.update((len(digests) + i, f) for i, f in b)
                out[len(digests) : len(digests) + len(x)] = x
                digests += d
                bar.update(len(x))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return out, digests, bad


@dataclass(frozen=True)
class _Split:
    """One split read from disk: the usable images, their labels, the class names, digest and bad files."""

    name: str  # "train" or "test"
    x: np.ndarray
    y: np.ndarray
    names: list[str]
    digest: str  # sha256 over sorted 'class/file sha256' lines of the images used
    bad: list[BadFile]


def _read_split(root: Path, split: str, size: tuple[int, int], channels: int, names: list[str] | None) -> _Split:
    """Decode every candidate image of `root/split`; bad files are collected (and their rows dropped), not raised."""
    classes, bad = list_split(root, split)
    if not classes:
        raise DatasetError(f"{root / split}: no class folders; expected {root / split}/<class>/*.png|jpg")
    if names is not None and list(classes) != names:
        raise DatasetError(f"{root / split}: class folders {list(classes)} do not match train/ classes {names}")
    paths = [p for files in classes.values() for p in files]
    rels = [f"{split}/{p.parent.name}/{p.name}" for p in paths]
    y = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in classes.values()])
    x, digests, failed = _load_all(paths, rels, size, channels, split)
    if failed:
        keep = np.ones(len(paths), dtype=bool)
        keep[list(failed)] = False
        x, y = x[keep], y[keep]
        rels = [r for r, k in zip(rels, keep, strict=True) if k]
        digests = [d for d, k in zip(digests, keep, strict=True) if k]
    lines = "".join(f"{r.split('/', 1)[1]} {d}\n" for r, d in zip(rels, digests, strict=True))
    digest = hashlib.sha256(lines.encode()).hexdigest()
    return _Split(split, x, y, list(classes), digest, sorted(bad + list(failed.values())))


def _check_classes_left(root: Path, split: _Split) -> None:
    """DatasetError naming each class folder that has no usable image once its bad files are left out."""
    counts = np.bincount(split.y, minlength=len(split.names))
    empty = [name for name, n in zip(split.names, counts, strict=True) if n == 0]
    if empty:
        where = ", ".join(str(root / split.name / name) for name in empty)
        raise DatasetError(
            f"{where}: no usable image left once the bad files are skipped; add readable images "
            "or remove the folder (every class needs images)"
        )


def read_image_folder(
    source: str, image_size: tuple[int, int], channels: int, on_bad_file: Literal["fail", "skip"] = "fail"
) -> ImageFolderDataset:
    """Read train/ (and test/ if present) class folders into uint8 (N, H, W, channels) arrays.

    Every file is checked. With bad files, `on_bad_file="fail"` raises one DatasetError naming all of them;
    `"skip"` leaves them out and returns them in `skipped` (sorted by relative path).
    `sources` maps "train/" (and "test/") to a sha256 over every used file's relative path and content hash.
    """
    root, size = Path(source), (int(image_size[0]), int(image_size[1]))
    if channels not in (1, 3):
        raise DatasetError(f"ingest.channels must be 1 or 3, got {channels}")
    if not (root / "train").is_dir():
        raise DatasetError(f"{root / 'train'}: not found; expected {root}/train/<class>/*.png|jpg")
    splits = {"train": _read_split(root, "train", size, channels, None)}
    if (root / "test").is_dir():
        splits["test"] = _read_split(root, "test", size, channels, splits["train"].names)
    bad = sorted(b for s in splits.values() for b in s.bad)
    if bad and on_bad_file != "skip":
        raise bad_files_error(root, bad)
    for split in splits.values():
        _check_classes_left(root, split)
    train, test = splits["train"], splits.get("test")
    sources = {f"{name}/": s.digest for name, s in splits.items()}
    test_x, test_y = (test.x, test.y) if test else (None, None)
    return ImageFolderDataset(train.x, train.y, train.names, test_x, test_y, sources, skipped=tuple(bad))
