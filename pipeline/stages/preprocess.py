"""Preprocess stage: convert the validated shards to the model's channel layout and record normalisation stats.

Images stay uint8 NHWC (4x smaller than float32 on disk and in memory); the model normalises inside its graph with
the per-channel mean/std written to stats.json (pixel units, 0-255, computed over the train split only).
Command: `python -m pipeline.stages.preprocess` (what dvc.yaml runs) or `mlops preprocess`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.core import io
from pipeline.core.command import DEFAULT_PARAMS, ParamsOpt, call, load, path_or
from pipeline.core.config import PreprocessConfig
from pipeline.core.errors import StageError
from pipeline.core.splits import OPTIONAL_SPLITS, SPLITS
from pipeline.data.images import channel_stats, convert_channels

SHARD_SIZE = 20_000


def _converted_splits(cfg: PreprocessConfig, data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split present in `data_dir` (stream optional) in the model's channel layout."""
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        try:
            x, y = io.read_split(data_dir, split)
        except FileNotFoundError:
            if split in OPTIONAL_SPLITS:
                continue
            raise
        try:
            splits[split] = (convert_channels(x, cfg.channels), y)
        except ValueError as exc:
            raise StageError(f"{data_dir}: split {split!r}: {exc}") from exc
    return splits


def _image_shape(splits: dict[str, tuple[np.ndarray, np.ndarray]], data_dir: Path) -> list[int]:
    """The common (H, W, C) of all splits; StageError for an empty train split or a split that differs."""
    x_train = splits["train"][0]
    if len(x_train) == 0:
        raise StageError(f"{data_dir}: the train split is empty; re-run `mlops ingest` / check `mlops validate`.")
    image_shape = [int(d) for d in x_train.shape[1:]]
    for split, (x, _) in splits.items():
        if list(x.shape[1:]) != image_shape:
            raise StageError(
                f"{data_dir}: split {split!r} has images {list(x.shape[1:])}, train has {image_shape}; "
                "run `mlops validate` to find the bad rows."
            )
    return image_shape


def run(cfg: PreprocessConfig, data_dir: str | Path, out_dir: str | Path) -> dict:
    """Convert every split of `data_dir` into `out_dir` (atomically) with stats.json and a copy of manifest.json.

    Reads: `data_dir/manifest.json` and the `{train,val,test,stream}-*.npz` shards (stream optional).
    Writes: `out_dir/` with converted uncompressed shards, `stats.json` (shape, mean/std, class names) and
    `manifest.json`.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = io.read_json(data_dir / "manifest.json")
    splits = _converted_splits(cfg, data_dir)
    image_shape = _image_shape(splits, data_dir)
    mean, std = channel_stats(splits["train"][0])

    shards: dict[str, list[dict]] = {}
    stats = {
        "image_shape": image_shape,
        "mean": mean,
        "std": std,
        "class_names": list(manifest.get("class_names", [])),
        "counts": {split: len(x) for split, (x, _) in splits.items()},
        "source_checksum": manifest.get("checksum"),
        "dtype": "uint8",
        "shards": shards,
    }
    with io.atomic_dir(out_dir) as tmp:
        for split, (x, y) in splits.items():
            shards[split] = io.write_shards(tmp, split, x, y, shard_size=SHARD_SIZE, compress=False)
        shutil.copy2(data_dir / "manifest.json", tmp / "manifest.json")
        io.write_json(tmp / "stats.json", stats)
    return stats


def command(
    params: ParamsOpt = DEFAULT_PARAMS,
    data: Annotated[Path | None, typer.Option(help="Ingested shards directory (default: paths.ingested).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Directory for training-ready shards + stats.json (default: paths.prepared).")
    ] = None,
) -> None:
    """Convert to the model's channel layout and record normalisation statistics."""
    cfg = load(params)
    out = path_or(out, cfg.paths.prepared)
    stats = call(run, cfg.preprocess, data_dir=path_or(data, cfg.paths.ingested), out_dir=out)
    typer.echo(f"prepared shards {stats['image_shape']} mean={stats['mean']} std={stats['std']} -> {out}")


if __name__ == "__main__":
    typer.run(command)
