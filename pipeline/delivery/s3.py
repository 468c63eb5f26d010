"""S3 plumbing for the releases: the client, error translation, URL parsing and verified object I/O.

Credentials come only from the environment / standard AWS configuration (never from params.yaml), and no
message here ever contains the secret key. Every upload is verified (Content-MD5 checked by the server, then
size and ETag re-read with HEAD).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator

from pipeline.core.config import DeployConfig
from pipeline.core.errors import StageError

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_REJECTED = (
    "the credentials were rejected: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and that "
    "they are allowed to read/write this bucket)"
)


# --------------------------------------------------------------------------------------------- client


def endpoint_of(cfg: DeployConfig) -> str | None:
    """cfg.endpoint_url, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else None (AWS's own endpoint)."""
    return cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def where(endpoint: str | None, bucket: str) -> str:
    """'endpoint <url>, bucket <name>' for messages (never credentials)."""
    return f"endpoint {endpoint or 'AWS default'}, bucket {bucket!r}"


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
        raise StageError(f"S3 ({where(endpoint, cfg.bucket)}): cannot read the AWS configuration: {exc}") from exc
    if credentials is None:
        raise StageError(
            f"S3 ({where(endpoint, cfg.bucket)}): no credentials found. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in the environment (for the local server: `source <(infra/local/s3.sh env)`) "
            "or configure an AWS profile; credentials never go in params.yaml."
        )
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
        source = (
            "deploy.endpoint_url"
            if cfg.endpoint_url
            else "AWS_ENDPOINT_URL_S3"
            if os.environ.get("AWS_ENDPOINT_URL_S3")
            else "AWS_ENDPOINT_URL"
        )
        raise StageError(
            f"S3 endpoint {endpoint!r} (from {source}) is not usable: {exc}; expected an "
            "http(s)://<host>[:<port>] URL such as http://127.0.0.1:9000"
        ) from None


# --------------------------------------------------------------------------------------------- errors


def _client_error_text(exc) -> str:
    """'<code>: <hint>' for a botocore ClientError, with a hint for the codes that mean something to a user."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "?")
    if code == "403":  # a HEAD response has no body, so no error code: say what it usually means
        code, hint = "403 Forbidden (SignatureDoesNotMatch, InvalidAccessKeyId or AccessDenied)", _REJECTED
    elif code in _CREDENTIAL_CODES:
        hint = _REJECTED
    elif code == "NoSuchBucket":
        hint = "the bucket does not exist; `mlops deploy` creates it"
    else:
        hint = err.get("Message") or ""
    return f"{code}: {hint}"


@contextlib.contextmanager
def s3_errors(cfg: DeployConfig, action: str, s3=None) -> Iterator[None]:
    """Turn botocore failures into a StageError naming the endpoint, bucket and action (never the secret)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError as BotoConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    endpoint = (s3.meta.endpoint_url if s3 is not None else None) or endpoint_of(cfg)
    place = where(endpoint, cfg.bucket)
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise StageError(
            f"S3 {action} ({place}): no usable credentials ({type(exc).__name__}); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment."
        ) from None
    except BotoConnectionError as exc:  # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ...
        raise StageError(
            f"S3 {action} ({place}): cannot reach the endpoint ({type(exc).__name__}). Is the "
            "S3 server running (infra/local/s3.sh start) and AWS_ENDPOINT_URL / deploy.endpoint_url "
            "right?"
        ) from None
    except ClientError as exc:
        raise StageError(f"S3 {action} ({place}) failed: {_client_error_text(exc)}") from None
    except BotoCoreError as exc:
        raise StageError(f"S3 {action} ({place}) failed: {type(exc).__name__}: {exc}") from None


def is_missing(exc, *codes: str) -> bool:
    """True when `exc` is a botocore ClientError whose error code is one of `codes` (e.g. "NoSuchKey", "404")."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in codes


# --------------------------------------------------------------------------------------------- URLs


def s3_url(bucket: str, key: str) -> str:
    """'s3://<bucket>/<key>'."""
    return f"s3://{bucket}/{key}"


def parse_s3_url(url: object) -> tuple[str, str]:
    """'s3://bucket/key/prefix' → ('bucket', 'key/prefix'); StageError for anything malformed."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise StageError(f"not an S3 URL: {url!r}; expected s3://<bucket>/<key>")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise StageError(f"S3 URL {url!r} has no bucket; expected s3://<bucket>/<key>")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StageError(
            f"S3 URL {url!r}: {bucket!r} is not a valid bucket name "
            "(3–63 characters: lowercase letters, digits, '.', '-')"
        )
    if "//" in key:
        raise StageError(f"S3 URL {url!r}: the key has an empty path segment ('//')")
    return bucket, key


# --------------------------------------------------------------------------------------------- objects


def get_bytes(s3, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None if the key does not exist (other errors propagate)."""
    from botocore.exceptions import ClientError

    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_missing(exc, "NoSuchKey", "404"):
            return None
        raise


def get_json(s3, bucket: str, key: str) -> dict | None:
    """The object parsed as a JSON object, or None if the key does not exist; StageError for anything else."""
    data = get_bytes(s3, bucket, key)
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise StageError(f"{s3_url(bucket, key)} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise StageError(f"{s3_url(bucket, key)} must hold a JSON object")
    return obj


def put_verified(s3, bucket: str, key: str, data: bytes, content_type: str) -> str:
    """PUT with Content-MD5 (the server rejects corrupted bodies), then HEAD: size and ETag must match."""
    digest = hashlib.md5(data).digest()  # integrity check demanded by S3, not a security hash
    put = s3.put_object(
        Bucket=bucket, Key=key, Body=data, ContentType=content_type, ContentMD5=base64.b64encode(digest).decode()
    )
    head = s3.head_object(Bucket=bucket, Key=key)
    put_etag, head_etag = put.get("ETag", "").strip('"'), head.get("ETag", "").strip('"')
    if head["ContentLength"] != len(data):
        raise StageError(
            f"upload of {s3_url(bucket, key)} not verified: {head['ContentLength']} bytes stored, {len(data)} sent"
        )
    if put_etag and head_etag != put_etag:
        raise StageError(
            f"upload of {s3_url(bucket, key)} not verified: ETag {head_etag} != {put_etag} "
            "(the object changed concurrently?)"
        )
    return head_etag


def ensure_bucket(s3, cfg: DeployConfig) -> None:
    """Create cfg.bucket unless it exists (and is ours)."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=cfg.bucket)
        return
    except ClientError as exc:
        if not is_missing(exc, "404", "NoSuchBucket", "NotFound"):
            raise
    region = s3.meta.region_name
    kwargs = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=cfg.bucket, **kwargs)
    except ClientError as exc:
        if not is_missing(exc, "BucketAlreadyOwnedByYou"):
            raise
