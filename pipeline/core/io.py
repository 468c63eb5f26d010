"""File I/O at the edges: atomic writes, array shards, JSON, checksums."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside `target`; on success it replaces `target`, on error it is removed.

    A writer killed outright (SIGKILL, power loss) cannot clean up: the next atomic_dir of the same target removes
    the temp dirs of writers that are gone, and restores the previous complete `target` if the kill hit between
    the two renames of the swap.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


_HOST = socket.gethostname().replace(".", "_").replace("/", "_") or "localhost"


def _recover(target: Path) -> None:
    """Clean up after an atomic_dir writer of `target` that was killed (see atomic_dir)."""
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not target.exists():
        old.rename(target)  # killed mid-swap: the previous complete output is still whole
    _sweep_stale(target)


def _temp_prefix(target: Path) -> str:
    """The name prefix of this process's temp files/dirs beside `target` (its pid: see _sweep_stale)."""
    return f".{target.name}.tmp-{os.getpid()}@{_HOST}."


def _sweep_stale(target: Path) -> None:
    """Remove the temp files/dirs beside `target` of writers on this host that are gone (killed outright)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*@{_HOST}.*"):
        pid = stale.name[len(f".{target.name}.tmp-") :].split("@", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists on this machine (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp file path beside `target`, renamed over it only if the block succeeds.

    The temp file's name carries the writer's pid: a writer killed outright leaves it behind, and the next
    atomic_path of the same target removes it (as atomic_dir does for its temp dirs).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: object) -> None:
    """Write `obj` as indented JSON, atomically (readers never see a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def read_json(path: str | Path) -> dict:
    """A JSON file's content; FileNotFoundError naming the stage to run when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the stage that writes it first (dvc repro).")
    return json.loads(path.read_text())


def json_default(obj: object) -> object:
    """`json.dumps` fallback: numpy scalars and arrays as Python values, paths as text."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_shards(
    directory: Path, split: str, x: np.ndarray, y: np.ndarray, shard_size: int, compress: bool = True
) -> list[dict]:
    """Write `x`, `y` as numbered .npz shards; return [{file, count, sha256}]."""
    save = np.savez_compressed if compress else np.savez
    shards = []
    n_shards = max(1, -(-len(x) // shard_size))
    for i in range(n_shards):
        sl = slice(i * shard_size, (i + 1) * shard_size)
        name = f"{split}-{i:05d}.npz"
        save(directory / name, x=x[sl], y=y[sl])
        shards.append({"file": name, "count": len(x[sl]), "sha256": sha256_file(directory / name)})
    return shards


def read_split(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every shard of `split` in `directory` (written by write_shards)."""
    directory = Path(directory)
    files = sorted(directory.glob(f"{split}-*.npz"))
    if not files:
        raise FileNotFoundError(f"{directory}: no shards for split {split!r}; run the stage that writes them first.")
    xs, ys = [], []
    for f in files:
        with np.load(f, allow_pickle=False) as data:
            xs.append(data["x"])
            ys.append(data["y"])
    return np.concatenate(xs), np.concatenate(ys)
