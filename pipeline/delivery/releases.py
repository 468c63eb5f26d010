"""Deploy stage: publish the registry's `champion` to S3 as an immutable release, then flip a pointer.

Layout under s3://<bucket>/<prefix>/<model_name>/:

    releases/v<version>/model.tflite     the served flatbuffer
    releases/v<version>/labels.json      class names, index order
    releases/v<version>/manifest.json    written last: sha256/bytes, input shape/dtype, metrics, lineage
    champion/pointer.json                {"release", "version", "sha256", "published_at"}: what to serve
    champion/previous.json               the pointer content it replaced (one-step rollback)

A release is complete only once its manifest exists, and the pointer is written only after every release
object was uploaded and verified, so a failed publish leaves the previous deployment untouched. A single
PUT replaces an S3 object atomically, so readers see either the old pointer or the new one.

Credentials come only from the environment / standard AWS configuration (never from params.yaml), and no
message here ever contains the secret key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from pipeline.core import io
from pipeline.core.config import DeployConfig, Params
from pipeline.core.errors import StageError

RELEASE_FILES = ("model.tflite", "labels.json", "manifest.json")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                     "ExpiredToken", "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


# --------------------------------------------------------------------------------------------- S3 plumbing


def endpoint_of(cfg: DeployConfig) -> str | None:
    """cfg.endpoint_url, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else None (AWS's own endpoint)."""
    return cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client(cfg: DeployConfig):
    """A boto3 S3 client for cfg's endpoint; credentials from the environment / AWS config only.

    Raises StageError (naming endpoint and bucket, never the secret) when no credentials can be found.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    endpoint = endpoint_of(cfg)
    try:
        session = boto3.session.Session()
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # e.g. a malformed ~/.aws/config or an unknown AWS_PROFILE
        raise StageError(f"S3 ({_where(endpoint, cfg.bucket)}): cannot read the AWS configuration: {exc}") from exc
    if credentials is None:
        raise StageError(
            f"S3 ({_where(endpoint, cfg.bucket)}): no credentials found. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in the environment (for the local server: `source <(infra/local/s3.sh env)`) "
            "or configure an AWS profile; credentials never go in params.yaml.")
    region = session.region_name or "us-east-1"
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint else "auto"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        # S3-compatible servers differ in their support for the newer CRC checksums; integrity is
        # enforced with Content-MD5 (checked by the server) plus head_object/sha256 checks here.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..." (e.g. AWS_ENDPOINT_URL=http://)
        source = ("deploy.endpoint_url" if cfg.endpoint_url else
                  "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL")
        raise StageError(f"S3 endpoint {endpoint!r} (from {source}) is not usable: {exc}; expected an "
                         "http(s)://<host>[:<port>] URL such as http://127.0.0.1:9000") from None


def _where(endpoint: str | None, bucket: str) -> str:
    return f"endpoint {endpoint or 'AWS default'}, bucket {bucket!r}"


@contextlib.contextmanager
def s3_errors(cfg: DeployConfig, action: str, s3=None) -> Iterator[None]:
    """Turn botocore failures into a StageError naming the endpoint, bucket and action (never the secret)."""
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                     NoCredentialsError, PartialCredentialsError)

    endpoint = (s3.meta.endpoint_url if s3 is not None else None) or endpoint_of(cfg)
    where = _where(endpoint, cfg.bucket)
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise StageError(f"S3 {action} ({where}): no usable credentials ({type(exc).__name__}); set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment.") from None
    except BotoConnectionError as exc:  # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ...
        raise StageError(f"S3 {action} ({where}): cannot reach the endpoint ({type(exc).__name__}). Is the "
                         "S3 server running (infra/local/s3.sh start) and AWS_ENDPOINT_URL / deploy.endpoint_url "
                         "right?") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "?")
        message = err.get("Message") or ""
        if code == "403":  # a HEAD response has no body, so no error code: say what it usually means
            code = "403 Forbidden (SignatureDoesNotMatch, InvalidAccessKeyId or AccessDenied)"
            hint = ("the credentials were rejected: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and that "
                    "they are allowed to read/write this bucket)")
        elif code in _CREDENTIAL_CODES:
            hint = ("the credentials were rejected: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and that "
                    "they are allowed to read/write this bucket)")
        elif code == "NoSuchBucket":
            hint = "the bucket does not exist; `mlops deploy` creates it"
        else:
            hint = message
        raise StageError(f"S3 {action} ({where}) failed: {code}: {hint}") from None
    except BotoCoreError as exc:
        raise StageError(f"S3 {action} ({where}) failed: {type(exc).__name__}: {exc}") from None


def parse_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/key/prefix' → ('bucket', 'key/prefix'); StageError for anything malformed."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise StageError(f"not an S3 URL: {url!r}; expected s3://<bucket>/<key>")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise StageError(f"S3 URL {url!r} has no bucket; expected s3://<bucket>/<key>")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StageError(f"S3 URL {url!r}: {bucket!r} is not a valid bucket name "
                         "(3–63 characters: lowercase letters, digits, '.', '-')")
    if "//" in key:
        raise StageError(f"S3 URL {url!r}: the key has an empty path segment ('//')")
    return bucket, key


def model_root(cfg: DeployConfig, model_name: str) -> str:
    """'<prefix>/<model_name>' without leading/trailing slashes (just the model name when prefix is empty)."""
    if not model_name or "/" in model_name:
        raise StageError(f"invalid model name {model_name!r} for an S3 key")
    prefix = cfg.prefix.strip("/")
    return f"{prefix}/{model_name}" if prefix else model_name


def release_prefix(cfg: DeployConfig, model_name: str, version: str) -> str:
    return f"{model_root(cfg, model_name)}/releases/v{_version(version)}/"


def pointer_key(cfg: DeployConfig, model_name: str) -> str:
    return f"{model_root(cfg, model_name)}/champion/pointer.json"


def previous_key(cfg: DeployConfig, model_name: str) -> str:
    return f"{model_root(cfg, model_name)}/champion/previous.json"


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _version(version) -> str:
    v = str(version).strip()
    v = v[1:] if v[:1] in ("v", "V") else v
    if not v or "/" in v:
        raise StageError(f"invalid model version {version!r}")
    return v


def _is_missing(exc, *codes: str) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in codes


def _get_bytes(s3, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None if the key does not exist (other errors propagate)."""
    from botocore.exceptions import ClientError

    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if _is_missing(exc, "NoSuchKey", "404"):
            return None
        raise


def _get_json(s3, bucket: str, key: str) -> dict | None:
    data = _get_bytes(s3, bucket, key)
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise StageError(f"{s3_url(bucket, key)} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise StageError(f"{s3_url(bucket, key)} must hold a JSON object")
    return obj


def _put_verified(s3, bucket: str, key: str, data: bytes, content_type: str) -> str:
    """PUT with Content-MD5 (the server rejects corrupted bodies), then HEAD: size and ETag must match."""
    digest = hashlib.md5(data).digest()  # integrity check demanded by S3, not a security hash
    put = s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type,
                        ContentMD5=base64.b64encode(digest).decode())
    head = s3.head_object(Bucket=bucket, Key=key)
    put_etag, head_etag = put.get("ETag", "").strip('"'), head.get("ETag", "").strip('"')
    if head["ContentLength"] != len(data):
        raise StageError(f"upload of {s3_url(bucket, key)} not verified: {head['ContentLength']} bytes stored, "
                         f"{len(data)} sent")
    if put_etag and head_etag != put_etag:
        raise StageError(f"upload of {s3_url(bucket, key)} not verified: ETag {head_etag} != {put_etag} "
                         "(the object changed concurrently?)")
    return head_etag


def ensure_bucket(s3, cfg: DeployConfig) -> None:
    """Create cfg.bucket unless it exists (and is ours)."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=cfg.bucket)
        return
    except ClientError as exc:
        if not _is_missing(exc, "404", "NoSuchBucket", "NotFound"):
            raise
    region = s3.meta.region_name
    kwargs = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=cfg.bucket, **kwargs)
    except ClientError as exc:
        if not _is_missing(exc, "BucketAlreadyOwnedByYou"):
            raise


def read_pointer(cfg: DeployConfig, model_name: str, *, s3=None) -> dict | None:
    """The current champion pointer ({"release", "version", "sha256", "published_at"}), None if never published."""
    s3 = s3 or s3_client(cfg)
    with s3_errors(cfg, f"read of the champion pointer of {model_name!r}", s3):
        try:
            pointer = _get_json(s3, cfg.bucket, pointer_key(cfg, model_name))
        except Exception as exc:
            if _is_missing(exc, "NoSuchBucket"):
                return None
            raise
    if pointer is not None and not {"release", "version", "sha256"} <= pointer.keys():
        raise StageError(f"{s3_url(cfg.bucket, pointer_key(cfg, model_name))} lacks release/version/sha256: "
                         f"{sorted(pointer)}")
    return pointer


# --------------------------------------------------------------------------------------------- publish


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def publish(cfg: DeployConfig, model_name: str, version: str, tflite_path: str | Path, class_names: list[str],
            metrics: dict, lineage: dict, *, s3=None) -> dict:
    """Upload an immutable release, verify it, then atomically flip champion/pointer.json to it.

    Re-publishing a version with the same model bytes is a no-op apart from refreshing the pointer;
    re-publishing it with *different* bytes is refused (releases are immutable). Returns
    {"manifest", "release", "pointer", "objects": {file: s3 URL}, "version", "skipped": False}.
    """
    from pipeline.ml.tflite import TFLiteModel

    version = _version(version)
    tflite_path = Path(tflite_path)
    if not tflite_path.is_file():
        raise StageError(f"{tflite_path}: .tflite to publish not found")
    model_bytes = tflite_path.read_bytes()
    try:
        model = TFLiteModel(model_bytes)
    except Exception as exc:  # noqa: BLE001 - any loader failure means "not a usable model"
        raise StageError(f"{tflite_path}: not a loadable TFLite model: {exc}") from exc
    class_names = [str(c) for c in class_names]
    n_out = int(model._out["shape"][-1])
    if len(class_names) != n_out:
        raise StageError(f"{tflite_path}: the model has {n_out} outputs but {len(class_names)} class names "
                         f"were given: {class_names}")
    sha = io.sha256_bytes(model_bytes)
    labels_bytes = (json.dumps(class_names) + "\n").encode()
    bucket, root = cfg.bucket, release_prefix(cfg, model_name, version)
    keys = {name: root + name for name in RELEASE_FILES}
    published_at = _utc_now()
    manifest = {
        "model_name": model_name,
        "version": version,
        "sha256": sha,
        "bytes": len(model_bytes),
        "input_shape": list(model.input_shape),
        "input_dtype": model.input_dtype.name,
        "class_names": class_names,
        "files": {"model.tflite": {"sha256": sha, "bytes": len(model_bytes)},
                  "labels.json": {"sha256": io.sha256_bytes(labels_bytes), "bytes": len(labels_bytes)}},
        "metrics": metrics,
        "lineage": lineage,
        "published_at": published_at,
    }

    s3 = s3 or s3_client(cfg)
    with s3_errors(cfg, f"publish of {model_name} v{version}", s3):
        try:  # a GET first: unlike HEAD, its error body names the problem (SignatureDoesNotMatch, ...)
            existing = _get_json(s3, bucket, keys["manifest.json"])
        except Exception as exc:
            if not _is_missing(exc, "NoSuchBucket"):
                raise
            ensure_bucket(s3, cfg)
            existing = None
        if existing is not None and existing.get("sha256") != sha:
            raise StageError(f"{s3_url(bucket, root)} already holds {model_name} v{version} with a different "
                             f"model.tflite (sha256 {existing.get('sha256')} != {sha}); releases are immutable: "
                             "register a new version instead.")
        # Same bytes again (or a first upload): (re)writing model and labels is harmless and repairs a
        # damaged release; an existing identical manifest is kept (with its original published_at).
        _put_verified(s3, bucket, keys["model.tflite"], model_bytes, "application/octet-stream")
        _put_verified(s3, bucket, keys["labels.json"], labels_bytes, "application/json")
        if existing is not None:
            manifest = existing
        else:
            manifest_bytes = (json.dumps(manifest, indent=2, default=io.json_default) + "\n").encode()
            _put_verified(s3, bucket, keys["manifest.json"], manifest_bytes, "application/json")

        old = _get_bytes(s3, bucket, pointer_key(cfg, model_name))
        pointer = {"release": root, "version": version, "sha256": sha, "published_at": published_at}
        old_pointer = _loads_or_none(old)
        if old_pointer is not None and old_pointer.get("version") == version and old_pointer.get("sha256") == sha:
            pointer = old_pointer  # already live: leave pointer and previous.json as they are
        else:
            if old is not None:
                _put_verified(s3, bucket, previous_key(cfg, model_name), old, "application/json")
            _put_verified(s3, bucket, pointer_key(cfg, model_name),
                          (json.dumps(pointer, indent=2) + "\n").encode(), "application/json")
    return {
        "skipped": False,
        "version": version,
        "manifest": manifest,
        "pointer_content": pointer,
        "release": s3_url(bucket, root),
        "pointer": s3_url(bucket, pointer_key(cfg, model_name)),
        "objects": {name: s3_url(bucket, key) for name, key in keys.items()},
    }


def _loads_or_none(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# --------------------------------------------------------------------------------------------- fetch


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
        raise StageError(f"nothing published for {model_name!r} at {s3_url(cfg.bucket, pointer_key(cfg, model_name))}"
                         f" ({_where(s3.meta.endpoint_url, cfg.bucket)}); run `mlops deploy` first.")
    release = pointer["release"]
    bucket = cfg.bucket
    if release.startswith("s3://"):
        bucket, release = parse_s3_url(release)
    release = release.rstrip("/") + "/"
    with s3_errors(cfg, f"download of {model_name} v{pointer['version']}", s3):
        manifest = _get_json(s3, bucket, release + "manifest.json")
        if manifest is None:
            raise StageError(f"{s3_url(bucket, release)}manifest.json is missing: the pointer names an incomplete "
                             "release; re-run `mlops deploy`.")
        if manifest.get("sha256") != pointer["sha256"]:
            raise StageError(f"{s3_url(bucket, release)}: manifest sha256 {manifest.get('sha256')} does not match "
                             f"the pointer's {pointer['sha256']}; refusing to serve it.")
        target = dest_dir / "model.tflite"
        with io.atomic_path(target) as tmp:
            data = _get_bytes(s3, bucket, release + "model.tflite")
            if data is None:
                raise StageError(f"{s3_url(bucket, release)}model.tflite is missing")
            tmp.write_bytes(data)
            actual = io.sha256_file(tmp)
            if actual != manifest["sha256"]:
                target.unlink(missing_ok=True)  # never leave a stale/previous model under that name either
                raise StageError(f"{s3_url(bucket, release)}model.tflite failed verification: sha256 {actual} != "
                                 f"manifest {manifest['sha256']}; the object was modified or corrupted. "
                                 "Refusing to serve it.")
        labels = _get_bytes(s3, bucket, release + "labels.json")
        if labels is not None:
            io.write_json(dest_dir / "labels.json", json.loads(labels))
    io.write_json(dest_dir / "manifest.json", manifest)
    return target, manifest


# --------------------------------------------------------------------------------------------- champion


def _version_tags(mv) -> tuple[dict, dict]:
    """Split model-version tags into metrics (eval.* → numbers where numeric) and lineage (everything else)."""
    metrics: dict[str, object] = {}
    lineage: dict[str, object] = {}
    for key, value in sorted((mv.tags or {}).items()):
        if key.startswith("eval."):
            try:
                metrics[key[len("eval."):]] = float(value)
            except (TypeError, ValueError):
                metrics[key[len("eval."):]] = value
        else:
            lineage[key] = value
    lineage.setdefault("run_id", getattr(mv, "run_id", None))
    lineage.setdefault("source", getattr(mv, "source", None))
    return metrics, lineage


def _find_labels(tflite: Path, root: Path) -> list[str]:
    candidates = [tflite.parent / "labels.json", *sorted(root.rglob("labels.json"))]
    for path in candidates:
        if path.is_file():
            labels = json.loads(path.read_text())
            if isinstance(labels, list) and labels:
                return [str(x) for x in labels]
    raise StageError(f"no labels.json next to {tflite.name} in the registered model; was it logged by "
                     "`mlops register` (pyfunc artifact 'labels')?")


def publish_champion(params: Params) -> dict:
    """Publish the registry's `champion` to S3 unless the pointer already names that version."""
    from pipeline.registry import store as registry

    name = params.register_.model_name
    cfg = params.deploy
    mv = registry.version_by_alias(name, "champion")
    if mv is None:
        raise StageError(f"{name}: no champion yet; approve a challenger first (set the `champion` alias).")
    version = str(mv.version)
    s3 = s3_client(cfg)
    pointer = read_pointer(cfg, name, s3=s3)
    if pointer is not None and str(pointer.get("version")) == version:
        release = pointer["release"]
        return {"skipped": True, "version": version, "reason": "the champion pointer already names this version",
                "release": release if release.startswith("s3://") else s3_url(cfg.bucket, release),
                "pointer": s3_url(cfg.bucket, pointer_key(cfg, name))}
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        tflite = registry.download_tflite(name, "champion", Path(tmp))
        if tflite is None:
            raise StageError(f"{name} v{version} (champion) has no .tflite artifact; was it registered by "
                             "`mlops register`?")
        now = registry.version_by_alias(name, "champion")
        if now is None or str(now.version) != version:
            raise StageError(f"{name}: the champion alias moved during deploy (v{version} → "
                             f"{'none' if now is None else 'v' + str(now.version)}); run `mlops deploy` again.")
        class_names = _find_labels(tflite, Path(tmp))
        metrics, lineage = _version_tags(mv)
        lineage["registry_model_uri"] = f"models:/{name}/{version}"
        return publish(cfg, name, version, tflite, class_names, metrics, lineage, s3=s3)
