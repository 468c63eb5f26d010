"""Image-folder reader: source/train/<class>/*.png|jpg|jpeg and optional source/test/<class>/*.

The layout keras.utils.image_dataset_from_directory reads. Class names are the sorted sub-directory names
of train/. Every image is converted to L or RGB (alpha is dropped, palettes expanded, 16-bit scaled) and
resized with bilinear filtering to `image_size` (H, W). Decoding runs in a process pool for large folders
(small images are bound by PIL's per-file Python overhead) and in a thread pool otherwise.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import DatasetError
from pipeline.data.dataset import RawDataset

EXTENSIONS = (".png", ".jpg", ".jpeg")
_CHUNK = 512
PROCESS_MIN_FILES = 4096  # below this, process start-up costs more than it saves


def _list_split(root: Path) -> dict[str, list[Path]]:
    """{class name: sorted image paths}; hidden entries and files directly under `root` are ignored."""
    classes: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files = []
        for f in sorted(os.scandir(entry.path), key=lambda e: e.name):
            if f.name.startswith(".") or f.is_dir():
                continue
            if not f.name.lower().endswith(EXTENSIONS):
                raise DatasetError(f"{f.path}: not an image file (expected {', '.join(EXTENSIONS)}); remove it")
            files.append(Path(f.path))
        if not files:
            raise DatasetError(
                f"{entry.path}: class folder has no images; add images ({', '.join(EXTENSIONS)}) or remove the folder"
            )
        classes[entry.name] = files
    return classes


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


def _decode_chunk(paths: list[Path], size: tuple[int, int], channels: int) -> tuple[np.ndarray, list[str]]:
    out = np.empty((len(paths), size[0], size[1], channels), dtype=np.uint8)
    digests = []
    for i, p in enumerate(paths):
        out[i], digest = load_image(p, size, channels)
        digests.append(digest)
    return out, digests


def _pool(n_files: int) -> Executor:
    """Processes for big jobs (small images are bound by PIL's Python overhead, i.e. the GIL), else threads."""
    cpus = os.cpu_count() or 1
    if n_files >= PROCESS_MIN_FILES and cpus > 1:
        import multiprocessing

        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        return ProcessPoolExecutor(min(cpus, 16), mp_context=multiprocessing.get_context(method))
    return ThreadPoolExecutor(min(8, cpus + 2))


def _load_all(paths: list[Path], size: tuple[int, int], channels: int, desc: str) -> tuple[np.ndarray, list[str]]:
    """Decode `paths` in parallel into one preallocated uint8 array (order kept); also return file sha256s."""
    from tqdm import tqdm

    out = np.empty((len(paths), size[0], size[1], channels), dtype=np.uint8)
    digests: list[str] = []
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    disable = len(paths) < 2000 or not sys.stderr.isatty()
    pool = _pool(len(paths))
    with pool, tqdm(total=len(paths), desc=desc, unit="img", disable=disable) as bar:
        try:
            for x, d in pool.map(_decode_chunk, chunks, repeat(size), repeat(channels)):
                out[len(digests) : len(digests) + len(x)] = x
                digests += d
                bar.update(len(x))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return out, digests


def _read_split(
    root: Path, size: tuple[int, int], channels: int, names: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Images, labels, class names and a content digest (sha256 over sorted 'class/file sha256' lines)."""
    classes = _list_split(root)
    if not classes:
        raise DatasetError(f"{root}: no class folders; expected {root}/<class>/*.png|jpg")
    if names is not None and list(classes) != names:
        raise DatasetError(f"{root}: class folders {list(classes)} do not match train/ classes {names}")
    paths = [p for files in classes.values() for p in files]
    y = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in classes.values()])
    x, digests = _load_all(paths, size, channels, root.name)
    lines = "".join(f"{p.parent.name}/{p.name} {d}\n" for p, d in zip(paths, digests, strict=True))
    return x, y, list(classes), hashlib.sha256(lines.encode()).hexdigest()


def read_image_folder(source: str, image_size: tuple[int, int], channels: int) -> RawDataset:
    """Read train/ (and test/ if present) class folders into uint8 (N, H, W, channels) arrays.

    `sources` maps "train/" (and "test/") to a sha256 over every file's relative path and content hash.
    """
    root, size = Path(source), (int(image_size[0]), int(image_size[1]))
    if channels not in (1, 3):
        raise DatasetError(f"ingest.channels must be 1 or 3, got {channels}")
    if not (root / "train").is_dir():
        raise DatasetError(f"{root / 'train'}: not found; expected {root}/train/<class>/*.png|jpg")
    train_x, train_y, names, digest = _read_split(root / "train", size, channels, None)
    sources = {"train/": digest}
    test_x = test_y = None
    if (root / "test").is_dir():
        test_x, test_y, _, sources["test/"] = _read_split(root / "test", size, channels, names)
    return RawDataset(train_x, train_y, names, test_x, test_y, sources)
