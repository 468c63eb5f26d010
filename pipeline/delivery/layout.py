"""Where releases live in S3, under `s3://<bucket>/<prefix>/<model_name>/`.

releases/v<version>/model.tflite     the served flatbuffer
releases/v<version>/labels.json      class names, index order
releases/v<version>/manifest.json    written last: sha256/bytes, input shape/dtype, metrics, lineage
champion/pointer.json                {"release", "version", "sha256", "published_at"}: what to serve
champion/previous.json               the pointer content it replaced (one-step rollback)
"""

from __future__ import annotations

from pipeline.core.config import DeployConfig
from pipeline.core.errors import StageError

RELEASE_FILES = ("model.tflite", "labels.json", "manifest.json")


def model_root(cfg: DeployConfig, model_name: str) -> str:
    """'<prefix>/<model_name>' without leading/trailing slashes (just the model name when prefix is empty)."""
    if not model_name or "/" in model_name:
        raise StageError(f"invalid model name {model_name!r} for an S3 key")
    prefix = cfg.prefix.strip("/")
    return f"{prefix}/{model_name}" if prefix else model_name


def release_prefix(cfg: DeployConfig, model_name: str, version: str) -> str:
    """'<root>/releases/v<version>/': the key prefix of one immutable release."""
    return f"{model_root(cfg, model_name)}/releases/v{version_label(version)}/"


def pointer_key(cfg: DeployConfig, model_name: str) -> str:
    """The key of champion/pointer.json (what to serve)."""
    return f"{model_root(cfg, model_name)}/champion/pointer.json"


def previous_key(cfg: DeployConfig, model_name: str) -> str:
    """The key of champion/previous.json (the pointer it replaced)."""
    return f"{model_root(cfg, model_name)}/champion/previous.json"


def version_label(version: object) -> str:
    """'v3', 'V3' or 3 → '3'; StageError for anything that cannot name a release."""
    v = str(version).strip()
    v = v[1:] if v[:1] in ("v", "V") else v
    if not v or "/" in v:
        raise StageError(f"invalid model version {version!r}")
    return v
