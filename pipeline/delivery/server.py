"""HTTP model server: the deployed champion behind FastAPI, hot-reloaded when the deployment changes.

A *source* supplies the model: `load() -> (TFLiteModel, manifest)` and a cheap `current_version() -> str`.
`S3Source` follows champion/pointer.json in S3 (what `mlops deploy` writes); `RegistrySource` follows an MLflow
alias directly. `pipeline.delivery.holder` keeps the loaded model and swaps it when the source's version
changes; `pipeline.delivery.api` is the FastAPI app (/health, /predict, /reload, /metrics); `serve` runs it with uvicorn
(uvloop + httptools, access log off by default), in one process or `deploy.serve_workers` worker processes, each
capturing a sample of its answers under `capture.location` when `capture.enabled` (`pipeline.delivery.capture`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pipeline.core.config import CaptureConfig, DeployConfig, Params
from pipeline.core.errors import StageError
from pipeline.delivery import releases
from pipeline.delivery.api import create_app
from pipeline.delivery.capture import location
from pipeline.delivery.metrics import MULTIPROC_ENV
from pipeline.delivery.s3 import s3_client, s3_url
from pipeline.registry import store
from pipeline.registry.aliases import CHAMPION
from pipeline.registry.champion import load_by_alias

SERVE_ENV = "MLOPS_SERVE_SPEC"  # JSON handed from `serve` to each worker process's `app_from_env`


class ModelSource(Protocol):
    """Where the served model comes from."""

    def load(self):  # -> (TFLiteModel, manifest dict)
        """The model and its manifest (version, sha256, input_shape, class_names, ...)."""

    def current_version(self) -> str:
        """The version that load() would return now; cheap, polled by the reloader."""


class S3Source:
    """The release named by s3://<bucket>/<prefix>/<model_name>/champion/pointer.json (sha256-verified)."""

    def __init__(self, cfg: DeployConfig, model_name: str):
        self.cfg, self.model_name = cfg, model_name
        self._s3 = s3_client(cfg)
        self.description = s3_url(cfg.bucket, releases.pointer_key(cfg, model_name))

    def current_version(self) -> str:
        """The version the pointer names; StageError when nothing is published."""
        pointer = releases.read_pointer(self.cfg, self.model_name, s3=self._s3)
        if pointer is None:
            raise StageError(f"nothing published at {self.description}; run `mlops deploy` first.")
        return str(pointer["version"])

    def load(self):
        """(TFLiteModel, manifest) of the release the pointer names, its sha256 verified."""
        from pipeline.ml.tflite import TFLiteModel

        with tempfile.TemporaryDirectory(prefix="serve-s3-") as tmp:
            path, manifest = releases.fetch_current(self.cfg, self.model_name, tmp, s3=self._s3)
            model = TFLiteModel(path.read_bytes())  # bytes in memory: the temp dir can go
        return model, manifest


class RegistrySource:
    """The .tflite of MLflow's `model_name@alias` (the pyfunc logged by `mlops register`)."""

    def __init__(self, model_name: str, alias: str = CHAMPION):
        self.model_name, self.alias = model_name, alias
        self.description = f"models:/{model_name}@{alias}"

    def current_version(self) -> str:
        """The version the alias names; StageError when it does not exist."""
        mv = store.version_by_alias(self.model_name, self.alias)
        if mv is None:
            raise StageError(f"{self.description} does not exist; approve a challenger first.")
        return str(mv.version)

    def load(self):
        """(TFLiteModel, manifest) of the version the alias names, through the registry's one champion loader."""
        registered = load_by_alias(self.model_name, self.alias)
        if registered is None:
            raise StageError(f"{self.description} does not exist; approve a challenger first.")
        model = registered.model()
        manifest = {
            "model_name": self.model_name,
            "version": registered.version,
            "sha256": registered.sha256,
            "bytes": len(registered.tflite),
            "input_shape": list(model.input_shape),
            "input_dtype": model.input_dtype.name,
            "class_names": registered.labels,
            "metrics": registered.metrics,
            "lineage": registered.lineage,
            "source": self.description,
        }
        return model, manifest


def make_source(params: Params, source_kind: str) -> ModelSource:
    """The model source for `mlops serve --source s3|registry`."""
    return _source(params.deploy, params.register_.model_name, source_kind)


def _source(cfg: DeployConfig, model_name: str, source_kind: str, alias: str = CHAMPION) -> ModelSource:
    if source_kind == "s3":
        return S3Source(cfg, model_name)
    if source_kind == "registry":
        return RegistrySource(model_name, alias)
    raise StageError(f"unknown model source {source_kind!r}; choose 's3' or 'registry'")


def app_from_env():
    """The app of one uvicorn worker process (`factory=True`), configured by `serve` through SERVE_ENV."""
    spec = json.loads(os.environ[SERVE_ENV])
    cfg = DeployConfig.model_validate(spec["deploy"])
    source = _source(cfg, spec["model_name"], spec["source"], spec["alias"])
    capture = spec.get("capture")
    captured = (CaptureConfig.model_validate(capture[0]), capture[1]) if capture else None
    return create_app(source, cfg, peers_dir=Path(spec["peers_dir"]), capture=captured)


def capture_of(params: Params, enabled: bool = True) -> tuple[CaptureConfig, str] | None:
    """(capture: section, where captures go) when `capture.enabled` and `enabled` (not --no-capture), else None."""
    return (params.capture, location(params)) if params.capture.enabled and enabled else None


def serve_config(params: Params, **overrides) -> DeployConfig:
    """`params.deploy` with the non-None `overrides` (CLI options) applied and validated (ConfigError if bad)."""
    from pydantic import ValidationError

    from pipeline.core.config import ConfigError

    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        return DeployConfig.model_validate({**params.deploy.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(f"invalid serve option: {exc}") from None


def serve(
    params: Params,
    source_kind: str = "s3",
    host: str | None = None,
    port: int | None = None,
    alias: str = CHAMPION,
    capture: bool = True,
    **overrides,
) -> None:
    """Run the API with uvicorn until interrupted: one process, or `serve_workers` worker processes.

    `alias` is the registry alias served with `source_kind` registry (e.g. challenger, for a staging server).
    `capture` False (`--no-capture`) turns the `capture:` section's sampling off.
    `overrides` are DeployConfig fields (serve_workers, serve_threads, batch_max_images, batch_max_wait_ms).
    Several workers each load the model (sha256 checked), micro-batch and hot-reload on their own; POST /reload
    reaches all of them (`pipeline.delivery.peers`) and /metrics aggregates them, through a temp dir created here
    (PROMETHEUS_MULTIPROC_DIR + the peers' directory) and removed at exit.
    """
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = serve_config(params, **overrides)
    source = _source(cfg, params.register_.model_name, source_kind, alias)
    captured = capture_of(params, capture)
    run: dict[str, Any] = {
        "host": host or cfg.serve_host,
        "port": port or cfg.serve_port,
        "log_level": "info",
        "access_log": cfg.serve_access_log,
        "loop": "uvloop",
        "http": "httptools",
    }
    if cfg.serve_workers == 1:
        uvicorn.run(create_app(source, cfg, capture=captured), **run)
        return
    source.current_version()  # fail here, clearly, when nothing can be served (not in every worker)
    with tempfile.TemporaryDirectory(prefix="mlops-serve-") as shared:
        os.environ[MULTIPROC_ENV] = str(Path(shared, "metrics"))
        Path(shared, "metrics").mkdir()
        Path(shared, "peers").mkdir()
        spec = {
            "deploy": cfg.model_dump(mode="json"),
            "model_name": params.register_.model_name,
            "source": source_kind,
            "alias": alias,
            "peers_dir": str(Path(shared, "peers")),
            "capture": [captured[0].model_dump(mode="json"), captured[1]] if captured else None,
        }
        os.environ[SERVE_ENV] = json.dumps(spec)
        uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=cfg.serve_workers, **run)
