"""HTTP model server: the deployed champion behind FastAPI, hot-reloaded when the deployment changes.

A *source* supplies the model: `load() -> (TFLiteModel, manifest)` and a cheap `current_version() -> str`.
`S3Source` follows champion/pointer.json in S3 (what `mlops deploy` writes); `RegistrySource` follows an MLflow
alias directly. `pipeline.delivery.holder` keeps the loaded model and swaps it when the source's version
changes; `pipeline.delivery.api` is the FastAPI app (/health, /predict, /reload); `serve` runs it with uvicorn.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Protocol

from pipeline.core.config import DeployConfig, Params
from pipeline.core.errors import StageError
from pipeline.delivery import releases
from pipeline.delivery.api import create_app
from pipeline.delivery.s3 import s3_client, s3_url
from pipeline.registry import store
from pipeline.registry.aliases import CHAMPION
from pipeline.registry.champion import load_by_alias


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
    if source_kind == "s3":
        return S3Source(params.deploy, params.register_.model_name)
    if source_kind == "registry":
        return RegistrySource(params.register_.model_name, CHAMPION)
    raise StageError(f"unknown model source {source_kind!r}; choose 's3' or 'registry'")


def serve(params: Params, source_kind: str = "s3", host: str | None = None, port: int | None = None) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(make_source(params, source_kind), params.deploy)
    uvicorn.run(app, host=host or params.deploy.serve_host, port=port or params.deploy.serve_port, log_level="info")
