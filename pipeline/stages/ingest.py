"""Ingest stage: read the configured dataset, split it (seeded, stratified), drop cross-split duplicates,
and write uint8 NHWC shards plus a checksummed manifest.json atomically.

Pure logic lives in the helpers (index arithmetic on labels and image hashes); I/O is in `run`.
Command: `python -m pipeline.stages.ingest` (what dvc.yaml runs) or `mlops ingest`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.core import io
from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, load, path_or
from pipeline.core.config import IngestConfig
from pipeline.core.errors import DatasetError
from pipeline.core.splits import SPLITS
from pipeline.data.dataset import RawDataset, read_dataset
from pipeline.data.folder_scan import BadFile, listing
from pipeline.data.images import image_hashes

# Later splits win: an image in test is dropped from the others, one in val from train/stream, etc.
_DEDUP_ORDER = ("test", "val", "stream", "train")


def _rng(seed: int, step: str) -> np.random.Generator:
    """An independent, reproducible generator per step, so changing one step never reshuffles another."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(step.encode()).digest()[:4], "big")])


def stratified_split(y: np.ndarray, fractions: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Split indices of `y` per class: part k gets round(n_c * fractions[k]); the rest goes to the last part.

    Returns len(fractions) + 1 sorted index arrays.
    """
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for k, f in enumerate(fractions):
            n = round(len(idx) * f)
            parts[k].append(idx[start : start + n])
            start += n
        parts[-1].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def cap_per_class(y: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices keeping at most `cap` random samples of each class."""
    keep = [rng.permutation(np.flatnonzero(y == c))[:cap] for c in np.unique(y)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def drop_duplicates(hashes: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Boolean keep-masks per split removing images whose hash occurs in a split earlier in _DEDUP_ORDER."""
    seen: set[str] = set()
    keep, dropped = {}, {}
    for split in _DEDUP_ORDER:
        h = hashes[split]
        keep[split] = np.array([v not in seen for v in h], dtype=bool)
        dropped[split] = int((~keep[split]).sum())
        seen.update(h.tolist())
    return keep, {s: dropped[s] for s in SPLITS}


def make_splits(
    raw: RawDataset, cfg: IngestConfig, seed: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """Carve test (if absent), cap per class, split train/val/stream, drop cross-split duplicates."""
    x, y = raw.train_x, raw.train_y
    if raw.test_x is None:
        test, rest = stratified_split(y, [cfg.test_fraction], _rng(seed, "test"))
        tx, ty = x[test], y[test]
        x, y = x[rest], y[rest]
    else:
        tx, ty = raw.test_x, raw.test_y
    if cfg.max_per_class is not None:
        keep = cap_per_class(y, cfg.max_per_class, _rng(seed, "cap-train"))
        x, y = x[keep], y[keep]
        keep = cap_per_class(ty, max(2, cfg.max_per_class // 5), _rng(seed, "cap-test"))
        tx, ty = tx[keep], ty[keep]
    val, stream, train = stratified_split(y, [cfg.val_fraction, cfg.stream_fraction], _rng(seed, "val-stream"))
    splits = {
        "train": (x[train], y[train]),
        "val": (x[val], y[val]),
        "test": (tx, ty),
        "stream": (x[stream], y[stream]),
    }
    dropped = dict.fromkeys(SPLITS, 0)
    if cfg.drop_cross_split_duplicates:
        masks, dropped = drop_duplicates({s: image_hashes(v[0]) for s, v in splits.items()})
        splits = {s: (v[0][masks[s]], v[1][masks[s]]) for s, v in splits.items()}
    # Shuffle within each split (seeded) so shards are not ordered by class.
    for s, (sx, sy) in splits.items():
        order = _rng(seed, f"order-{s}").permutation(len(sy))
        splits[s] = (np.ascontiguousarray(sx[order]), sy[order])
    return splits, dropped


def check_raw(raw: RawDataset) -> None:
    """DatasetError unless images are uint8 NHWC with matching labels in range."""
    n = len(raw.class_names)
    for split, x, y in (("train", raw.train_x, raw.train_y), ("test", raw.test_x, raw.test_y)):
        if x is None or y is None:
            continue
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
            raise DatasetError(
                f"{split}: expected uint8 (N,H,W,C) images with N labels, got {x.dtype} {x.shape} and {len(y)} labels"
            )
        if x.shape[1:] != raw.train_x.shape[1:]:
            raise DatasetError(f"test images are {x.shape[1:]} but train images {raw.train_x.shape[1:]}")
        if len(y) and (y.min() < 0 or y.max() >= n):
            raise DatasetError(f"{split}: labels must lie in [0, {n}), found {int(y.min())}..{int(y.max())}")
    if len(raw.train_y) == 0:
        raise DatasetError("the dataset has no training images")


def manifest_checksum(split_info: dict[str, dict]) -> str:
    """One sha256 over every shard's sha256: the data version recorded in lineage tags."""
    shard_hashes = sorted(sh["sha256"] for info in split_info.values() for sh in info["shards"])
    return io.sha256_bytes(json.dumps(shard_hashes).encode())


def build_manifest(
    dataset: str, raw: RawDataset, seed: int, split_info: dict[str, dict], dropped: dict[str, int]
) -> dict:
    """The manifest.json content; `checksum` covers every shard's sha256.

    An image-folder read also records `skipped_files`: each source file left out (relative path and reason).
    """
    manifest = {
        "dataset": dataset,
        "class_names": list(raw.class_names),
        "image_shape": [int(d) for d in raw.train_x.shape[1:]],
        "seed": int(seed),
        "splits": split_info,
        "sources": dict(raw.sources),
        "duplicates_dropped": dropped,
        "checksum": manifest_checksum(split_info),
    }
    skipped = getattr(raw, "skipped", None)  # an ImageFolderDataset's bad files (ingest.on_bad_file: skip)
    if skipped is not None:
        manifest["skipped_files"] = [b.record() for b in skipped]
    return manifest


def add_accepted(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    accepted: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    seed: int,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """Append monitoring batches accepted for retraining to train.

    Accepted images leave the stream split (consumed); any that duplicate val/test images are dropped (leakage).
    """
    ax, ay = accepted
    if ax.shape[1:] != splits["train"][0].shape[1:]:
        raise DatasetError(
            f"accepted batches hold {ax.shape[1:]} images but the dataset {splits['train'][0].shape[1:]}"
        )
    if len(ay) and (ay.min() < 0 or ay.max() >= num_classes):
        raise DatasetError(f"accepted batches: labels must lie in [0, {num_classes})")
    accepted_hashes = image_hashes(ax)
    held_out = set(image_hashes(splits["val"][0]).tolist()) | set(image_hashes(splits["test"][0]).tolist())
    keep = np.array([h not in held_out for h in accepted_hashes], dtype=bool)
    sx, sy = splits["stream"]
    in_stream = np.isin(image_hashes(sx), accepted_hashes)
    tx, ty = splits["train"]
    x = np.concatenate([tx, ax[keep]])
    y = np.concatenate([ty.astype(np.int64), ay[keep]])
    order = _rng(seed, "order-train-accepted").permutation(len(y))
    out = {**splits, "train": (np.ascontiguousarray(x[order]), y[order]), "stream": (sx[~in_stream], sy[~in_stream])}
    return out, {
        "accepted": int(keep.sum()),
        "accepted_dropped_as_leakage": int((~keep).sum()),
        "stream_consumed": int(in_stream.sum()),
    }


def run(
    cfg: IngestConfig, seed: int, out_dir: Path, cache_dir: Path = Path("data/cache"), accepted_dir: Path | None = None
) -> dict:
    """Read, split (plus accepted monitoring batches) and write to `out_dir` atomically; return the manifest.

    Reads: the dataset at `cfg.source` (or `cfg.url`, cached in `cache_dir`), accepted batches in `accepted_dir`.
    Writes: `out_dir/{train,val,test,stream}-*.npz` shards and `out_dir/manifest.json`.
    """
    raw = read_dataset(cfg, Path(cache_dir))
    check_raw(raw)
    splits, dropped = make_splits(raw, cfg, seed)
    accepted_info = {"accepted": 0}
    accepted = load_accepted(accepted_dir) if accepted_dir else None
    if accepted is not None:
        splits, accepted_info = add_accepted(splits, accepted, len(raw.class_names), seed)
    n_classes = len(raw.class_names)
    label_dtype = np.uint8 if n_classes <= 256 else np.int64
    split_info = {}
    with io.atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            x, y = splits[split]
            split_info[split] = {
                "count": len(y),
                "class_counts": np.bincount(y, minlength=n_classes).tolist(),
                "shards": io.write_shards(tmp, split, x, y.astype(label_dtype), cfg.shard_size),
            }
        manifest = {**build_manifest(cfg.dataset, raw, seed, split_info, dropped), "monitoring": accepted_info}
        io.write_json(tmp / "manifest.json", manifest)
    return manifest


def load_accepted(accepted_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """All monitoring batches accepted for retraining (`accepted_dir/*.npz`, by name), concatenated; None if none.

    Each batch must hold uint8 (N, H, W, C) images `x` and N integer labels `y`, all batches the same image shape;
    otherwise DatasetError names the file. Labels come back as int64.
    """
    import zipfile

    files = sorted(Path(accepted_dir).glob("*.npz")) if Path(accepted_dir).is_dir() else []
    files = [f for f in files if not f.name.startswith(".")]  # skip atomic-write temporaries
    if not files:
        return None
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as data:
                x, y = data["x"], data["y"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{f}: unreadable accepted batch ({exc}); expected an .npz with arrays x and y") from exc
        if x.dtype != np.uint8 or x.ndim != 4:
            raise DatasetError(f"{f}: expected uint8 (N, H, W, C) images, got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(f"{f}: expected {len(x)} integer labels in a 1-D array, got {y.dtype} {y.shape}")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise DatasetError(f"{f}: images are {x.shape[1:]} but {files[0].name} has {xs[0].shape[1:]}")
        xs.append(x)
        ys.append(y.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def command(
    params: ParamsOpt = DEFAULT_PARAMS,
    out: Annotated[
        Path | None, typer.Option(help="Directory for shards + manifest.json (default: paths.ingested).")
    ] = None,
) -> None:
    """Read the configured dataset into seeded train/val/test/stream shards with a checksummed manifest."""
    cfg = load(params)
    out = path_or(out, cfg.paths.ingested)
    manifest = call(
        run,
        cfg.ingest,
        seed=cfg.seed,
        out_dir=out,
        cache_dir=Path(cfg.paths.raw_cache),
        accepted_dir=Path(cfg.paths.accepted),
    )
    counts = {k: v["count"] for k, v in manifest["splits"].items()}
    typer.echo(f"ingested {cfg.ingest.dataset}: {counts} -> {out}")
    _echo_skipped(manifest.get("skipped_files", []), cfg.ingest.source, out)


def _echo_skipped(skipped: list[dict], source: str, out: Path) -> None:
    """Tell the user which source files `ingest.on_bad_file: skip` left out (they stay listed in the manifest)."""
    if not skipped:
        return
    bad = [BadFile(s["path"], "", s["reason"]) for s in skipped]
    typer.echo(f"skipped {len(bad)} bad source file(s) (ingest.on_bad_file: skip; source files left untouched):")
    typer.echo("\n".join(listing(source, bad)))
    typer.echo(f"each is listed with its reason under skipped_files in {out / 'manifest.json'}")


if __name__ == "__main__":
    typer.run(command)
