"""Publish the registry's `champion` to S3 as an immutable release, then flip a pointer; fetch what it names.

A release is complete only once its manifest exists, and the pointer is written only after every release
object was uploaded and verified, so a failed publish leaves the previous deployment untouched. A single
PUT replaces an S3 object atomically, so readers see either the old pointer or the new one.

The key layout lives in `pipeline.delivery.layout`; the S3 client, error messages and verified uploads in
`pipeline.delivery.s3`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core import clock, io
from pipeline.core.config import DeployConfig, Params
from pipeline.core.errors import StageError
from pipeline.delivery.layout import RELEASE_FILES, pointer_key, previous_key, release_prefix, version_label
from pipeline.delivery.s3 import (
    ensure_bucket,
    get_bytes,
    get_json,
    is_missing,
    parse_s3_url,
    put_verified,
    s3_client,
    s3_errors,
    s3_url,
    where,
)
from pipeline.registry import store
from pipeline.registry.aliases import CHAMPION
from pipeline.registry.champion import load_by_alias


def read_pointer(cfg: DeployConfig, model_name: str, *, s3=None) -> dict | None:
    """The current champion pointer ({"release", "version", "sha256", "published_at"}), None if never published."""
    s3 = s3 or s3_client(cfg)
    with s3_errors(cfg, f"read of the champion pointer of {model_name!r}", s3):
        try:
            pointer = get_json(s3, cfg.bucket, pointer_key(cfg, model_name))
        except Exception as exc:
            if is_missing(exc, "NoSuchBucket"):
                return None
            raise
    if pointer is not None and not {"release", "version", "sha256"} <= pointer.keys():
        raise StageError(
            f"{s3_url(cfg.bucket, pointer_key(cfg, model_name))} lacks release/version/sha256: {sorted(pointer)}"
        )
    return pointer


# --------------------------------------------------------------------------------------------- publish


def _labels_bytes(class_names: list[str]) -> bytes:
    return (json.dumps(class_names) + "\n").encode()


def _load_model(tflite: bytes | str | Path, what: str):
    """(model bytes, TFLiteModel) from bytes or a file; StageError naming `what` when it is not loadable."""
    from pipeline.ml.tflite import TFLiteModel

    if not isinstance(tflite, bytes):
        if not Path(tflite).is_file():
            raise StageError(f"{what}: .tflite to publish not found")
        tflite = Path(tflite).read_bytes()
    try:
        return tflite, TFLiteModel(tflite)
    except Exception as exc:  # any loader failure means "not a usable model"
        raise StageError(f"{what}: not a loadable TFLite model: {exc}") from exc


def build_manifest(
    model_name: str,
    version: str,
    model_bytes: bytes,
    model,
    class_names: list[str],
    metrics: dict,
    lineage: dict,
    published_at: str,
) -> dict:
    """The release's manifest.json content (model/labels sha256 and size, input shape/dtype, metrics, lineage)."""
    sha = io.sha256_bytes(model_bytes)
    labels_bytes = _labels_bytes(class_names)
    return {
        "model_name": model_name,
        "version": version,
        "sha256": sha,
        "bytes": len(model_bytes),
        "input_shape": list(model.input_shape),
        "input_dtype": model.input_dtype.name,
        "class_names": class_names,
        "files": {
            "model.tflite": {"sha256": sha, "bytes": len(model_bytes)},
            "labels.json": {"sha256": io.sha256_bytes(labels_bytes), "bytes": len(labels_bytes)},
        },
        "metrics": metrics,
        "lineage": lineage,
        "published_at": published_at,
    }


def _upload_release(s3, cfg: DeployConfig, root: str, manifest: dict, model_bytes: bytes) -> dict:
    """Upload model and labels, then the manifest last; returns the manifest now in S3.

    Same bytes again (or a first upload): (re)writing model and labels is harmless and repairs a damaged
    release; an existing identical manifest is kept (with its original published_at).
    """
    bucket = cfg.bucket
    try:  # a GET first: unlike HEAD, its error body names the problem (SignatureDoesNotMatch, ...)
        existing = get_json(s3, bucket, root + "manifest.json")
    except Exception as exc:
        if not is_missing(exc, "NoSuchBucket"):
            raise
        ensure_bucket(s3, cfg)
        existing = None
    if existing is not None and existing.get("sha256") != manifest["sha256"]:
        raise StageError(
            f"{s3_url(bucket, root)} already holds {manifest['model_name']} v{manifest['version']} "
            f"with a different model.tflite (sha256 {existing.get('sha256')} != {manifest['sha256']}); "
            "releases are immutable: register a new version instead."
        )
    put_verified(s3, bucket, root + "model.tflite", model_bytes, "application/octet-stream")
    put_verified(s3, bucket, root + "labels.json", _labels_bytes(manifest["class_names"]), "application/json")
    if existing is not None:
        return existing
    manifest_bytes = (json.dumps(manifest, indent=2, default=io.json_default) + "\n").encode()
    put_verified(s3, bucket, root + "manifest.json", manifest_bytes, "application/json")
    return manifest


def _flip_pointer(s3, cfg: DeployConfig, model_name: str, pointer: dict) -> dict:
    """Save the old pointer as previous.json, then write `pointer`; a no-op when it is already live."""
    bucket = cfg.bucket
    old = get_bytes(s3, bucket, pointer_key(cfg, model_name))
    old_pointer = _loads_or_none(old)
    if (
        old_pointer is not None
        and old_pointer.get("version") == pointer["version"]
        and old_pointer.get("sha256") == pointer["sha256"]
    ):
        return old_pointer  # already live: leave pointer and previous.json as they are
    if old is not None:
        put_verified(s3, bucket, previous_key(cfg, model_name), old, "application/json")
    put_verified(
        s3, bucket, pointer_key(cfg, model_name), (json.dumps(pointer, indent=2) + "\n").encode(), "application/json"
    )
    return pointer


def _loads_or_none(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def publish(
    cfg: DeployConfig,
    model_name: str,
    version: str,
    tflite: bytes | str | Path,
    class_names: list[str],
    metrics: dict,
    lineage: dict,
    *,
    s3=None,
) -> dict:
    """Upload an immutable release (tflite: its bytes or a path), verify it, then atomically flip the pointer.

    Re-publishing a version with the same model bytes is a no-op apart from refreshing the pointer;
    re-publishing it with *different* bytes is refused (releases are immutable). Returns
    {"manifest", "release", "pointer", "objects": {file: s3 URL}, "version", "skipped": False}.
    """
    version = version_label(version)
    what = f"{model_name} v{version}" if isinstance(tflite, bytes) else str(tflite)
    model_bytes, model = _load_model(tflite, what)
    class_names = [str(c) for c in class_names]
    n_out = int(model.predict(np.zeros((0, *model.input_shape), np.float32)).shape[-1])  # empty batch: no inference
    if len(class_names) != n_out:
        raise StageError(
            f"{what}: the model has {n_out} outputs but {len(class_names)} class names were given: {class_names}"
        )
    published_at = clock.utc_iso()
    manifest = build_manifest(model_name, version, model_bytes, model, class_names, metrics, lineage, published_at)
    bucket, root = cfg.bucket, release_prefix(cfg, model_name, version)
    pointer = {"release": root, "version": version, "sha256": manifest["sha256"], "published_at": published_at}
    s3 = s3 or s3_client(cfg)
    with s3_errors(cfg, f"publish of {model_name} v{version}", s3):
        manifest = _upload_release(s3, cfg, root, manifest, model_bytes)
        pointer = _flip_pointer(s3, cfg, model_name, pointer)
    return {
        "skipped": False,
        "version": version,
        "manifest": manifest,
        "pointer_content": pointer,
        "release": s3_url(bucket, root),
        "pointer": s3_url(bucket, pointer_key(cfg, model_name)),
        "objects": {name: s3_url(bucket, root + name) for name in RELEASE_FILES},
    }


# --------------------------------------------------------------------------------------------- fetch


def _download_verified(s3, bucket: str, release: str, manifest: dict, target: Path) -> None:
    """Write the release's model.tflite to `target` only if its sha256 matches the manifest."""
    with io.atomic_path(target) as tmp:
        data = get_bytes(s3, bucket, release + "model.tflite")
        if data is None:
            raise StageError(f"{s3_url(bucket, release)}model.tflite is missing")
        tmp.write_bytes(data)
        actual = io.sha256_file(tmp)
        if actual != manifest["sha256"]:
            target.unlink(missing_ok=True)  # never leave a stale/previous model under that name either
            raise StageError(
                f"{s3_url(bucket, release)}model.tflite failed verification: sha256 {actual} != "
                f"manifest {manifest['sha256']}; the object was modified or corrupted. "
                "Refusing to serve it."
            )


def fetch_current(cfg: DeployConfig, model_name: str, dest_dir: str | Path, *, s3=None) -> tuple[Path, dict]:
    """Download the release the pointer names into dest_dir; verify model.tflite's sha256 before returning.

    Returns (path of model.tflite, manifest). StageError when nothing is published, when a release object
    is missing, or when the model's sha256 differs from the manifest/pointer (the bad file is removed).
    """
    s3 = s3 or s3_client(cfg)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    pointer = read_pointer(cfg, model_name, s3=s3)
    if pointer is None:
        raise StageError(
            f"nothing published for {model_name!r} at {s3_url(cfg.bucket, pointer_key(cfg, model_name))}"
            f" ({where(s3.meta.endpoint_url, cfg.bucket)}); run `mlops deploy` first."
        )
    release, bucket = pointer["release"], cfg.bucket
    if release.startswith("s3://"):
        bucket, release = parse_s3_url(release)
    release = release.rstrip("/") + "/"
    with s3_errors(cfg, f"download of {model_name} v{pointer['version']}", s3):
        manifest = get_json(s3, bucket, release + "manifest.json")
        if manifest is None:
            raise StageError(
                f"{s3_url(bucket, release)}manifest.json is missing: the pointer names an incomplete "
                "release; re-run `mlops deploy`."
            )
        if manifest.get("sha256") != pointer["sha256"]:
            raise StageError(
                f"{s3_url(bucket, release)}: manifest sha256 {manifest.get('sha256')} does not match "
                f"the pointer's {pointer['sha256']}; refusing to serve it."
            )
        target = dest_dir / "model.tflite"
        _download_verified(s3, bucket, release, manifest, target)
        labels = get_bytes(s3, bucket, release + "labels.json")
        if labels is not None:
            io.write_json(dest_dir / "labels.json", json.loads(labels))
    io.write_json(dest_dir / "manifest.json", manifest)
    return target, manifest


# --------------------------------------------------------------------------------------------- champion


def publish_champion(params: Params) -> dict:
    """Publish the registry's `champion` to S3 unless the pointer already names that version."""
    name, cfg = params.register_.model_name, params.deploy
    mv = store.version_by_alias(name, CHAMPION)
    if mv is None:
        raise StageError(f"{name}: no champion yet; approve a challenger first (set the `{CHAMPION}` alias).")
    version = str(mv.version)
    s3 = s3_client(cfg)
    pointer = read_pointer(cfg, name, s3=s3)
    if pointer is not None and str(pointer.get("version")) == version:
        release = pointer["release"]
        return {
            "skipped": True,
            "version": version,
            "reason": "the champion pointer already names this version",
            "release": release if release.startswith("s3://") else s3_url(cfg.bucket, release),
            "pointer": s3_url(cfg.bucket, pointer_key(cfg, name)),
        }
    champion = load_by_alias(name, CHAMPION)  # retried until the alias holds still across the download
    if champion is None or champion.version != version:
        raise StageError(
            f"{name}: the champion alias moved during deploy (v{version} → "
            f"{'none' if champion is None else 'v' + champion.version}); run `mlops deploy` again."
        )
    lineage = {**champion.lineage, "registry_model_uri": f"models:/{name}/{version}"}
    return publish(cfg, name, version, champion.tflite, champion.labels, champion.metrics, lineage, s3=s3)
