"""Dataset readers: one module per on-disk format, each returning a RawDataset."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import DatasetError

if TYPE_CHECKING:
    from pipeline.core.config import IngestConfig

__all__ = ["DatasetError", "RawDataset", "download", "read_dataset"]


@dataclass(frozen=True)
class RawDataset:
    """Images as uint8 arrays of shape (N, H, W, C) with integer labels in [0, len(class_names))."""

    train_x: np.ndarray
    train_y: np.ndarray
    class_names: list[str]
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    sources: dict[str, str] = field(default_factory=dict)  # input file -> sha256 of its (decompressed) bytes


def read_dataset(cfg: IngestConfig, cache_dir: Path) -> RawDataset:
    """Read the dataset named by `cfg.dataset` (readers are imported lazily)."""
    if cfg.dataset == "fashion-mnist":
        from pipeline.data.idx import read_fashion_mnist

        return read_fashion_mnist(cfg.source, cfg.url, Path(cache_dir))
    if cfg.dataset == "cifar10":
        from pipeline.data.cifar import read_cifar10

        return read_cifar10(cfg.source, cfg.url, Path(cache_dir))
    if cfg.dataset == "image-folder":
        from pipeline.data.image_folder import read_image_folder

        return read_image_folder(cfg.source, cfg.image_size, cfg.channels, on_bad_file=cfg.on_bad_file)
    raise DatasetError(f"ingest.dataset: unknown dataset {cfg.dataset!r}; use fashion-mnist, cifar10 or image-folder")


def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` via a temp file renamed into place; DatasetError if it cannot be fetched."""
    import urllib.error
    import urllib.request

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        os.replace(name, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DatasetError(
            f"could not download {url}: {reason}. If this machine is offline, copy the file to {dest} "
            "or point ingest.source at a local copy."
        ) from exc
    finally:
        Path(name).unlink(missing_ok=True)
    return dest


def locate(name: str, source: Path, url: str | None, cache_dir: Path, hint: str = "") -> Path:
    """Find `name` in `source`, else in `cache_dir`, else download `url/name` into `cache_dir`."""
    for candidate in (source / name, cache_dir / name):
        if candidate.is_file():
            return candidate
    if url:
        return download(f"{url.rstrip('/')}/{name}", cache_dir / name)
    raise DatasetError(f"{source / name}: not found and ingest.url is not set. {hint}".rstrip())
