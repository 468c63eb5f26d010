"""The S3 inbox of the feedback loop: incoming batches arrive under `monitor.inbox` (s3://bucket/prefix).

A stateless worker copies them into its local `paths.incoming` folder (the monitor's usual input), processes
them, and only after its commit and data are pushed settles them: accepted batches (now versioned in
`paths.accepted`) are deleted from the inbox, rejected ones move to `<prefix>/rejected/`. A run that dies before
settling leaves the inbox as it was; the versioned monitor state makes re-processing a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.core import io
from pipeline.core.config import DeployConfig
from pipeline.delivery.s3 import get_bytes, parse_s3_url, put_verified, s3_client, s3_errors

REJECTED = "rejected"
_SUFFIXES = (".npz", ".json")


def _split(uri: str) -> tuple[str, str]:
    bucket, prefix = parse_s3_url(uri)
    return bucket, (prefix.rstrip("/") + "/") if prefix else ""


def _for(cfg: DeployConfig, uri: str) -> DeployConfig:
    """`cfg` (endpoint, credentials) aimed at the inbox's bucket, so error messages name that bucket."""
    return cfg.model_copy(update={"bucket": parse_s3_url(uri)[0]})


def list_batches(cfg: DeployConfig, uri: str) -> list[str]:
    """Keys of the .npz/.json objects directly under the inbox prefix (not in rejected/), oldest first."""
    cfg = _for(cfg, uri)
    bucket, prefix = _split(uri)
    s3 = s3_client(cfg)
    with s3_errors(cfg, f"list {uri}", s3):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        objects = [obj for page in pages for obj in page.get("Contents", [])]
    objects.sort(key=lambda obj: (obj["LastModified"], obj["Key"]))
    return [obj["Key"] for obj in objects if obj["Key"].endswith(_SUFFIXES)]


def fetch(cfg: DeployConfig, uri: str, dest: Path) -> list[str]:
    """Download every inbox batch (and sidecar) into `dest`; the file names fetched."""
    cfg = _for(cfg, uri)
    bucket, _ = _split(uri)
    s3 = s3_client(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for key in list_batches(cfg, uri):
        name = key.rsplit("/", 1)[-1]
        with s3_errors(cfg, f"download s3://{bucket}/{key}", s3):
            data = get_bytes(s3, bucket, key)  # one GET (S3-compatible servers differ on ranged downloads)
        if data is None:  # settled by a concurrent run since the listing
            continue
        with io.atomic_path(dest / name) as tmp:
            tmp.write_bytes(data)
        names.append(name)
    return names


def upload(cfg: DeployConfig, uri: str, files: list[Path]) -> list[str]:
    """Put local batch files (and their .json sidecars) into the inbox; the s3:// URLs written."""
    cfg = _for(cfg, uri)
    bucket, prefix = _split(uri)
    s3 = s3_client(cfg)
    written = []
    for path in files:
        for part in (path.with_suffix(".json"), path):  # the .npz last: a listed batch has its sidecar
            if part.is_file():
                with s3_errors(cfg, f"upload {part.name} to {uri}", s3):
                    put_verified(s3, bucket, prefix + part.name, part.read_bytes(), "application/octet-stream")
                written.append(f"s3://{bucket}/{prefix}{part.name}")
    return written


def settle(
    cfg: DeployConfig, uri: str, names: list[str], incoming: Path, seen: Callable[[Path], bool]
) -> dict[str, list[str]]:
    """After the run is pushed: drop processed batches from the inbox, keeping rejected ones under rejected/.

    A batch still in `incoming` stays in the inbox unless `seen(path)` (its content was processed before, e.g. a
    re-sent copy); one not processed yet (max_batches reached) is left for the next run.
    """
    cfg = _for(cfg, uri)
    bucket, prefix = _split(uri)
    s3 = s3_client(cfg)
    done: dict[str, list[str]] = {"removed": [], "rejected": [], "kept": []}
    for name in names:
        local = incoming / name
        npz = local.with_suffix(".npz")
        if local.exists() and not (npz.is_file() and seen(npz)):
            done["kept"].append(name)
            continue
        key = prefix + name
        with s3_errors(cfg, f"settle s3://{bucket}/{key}", s3):
            if (incoming / REJECTED / name).exists():
                s3.copy_object(
                    Bucket=bucket, Key=f"{prefix}{REJECTED}/{name}", CopySource={"Bucket": bucket, "Key": key}
                )
                done["rejected"].append(name)
            else:
                done["removed"].append(name)
            s3.delete_object(Bucket=bucket, Key=key)
    return done
