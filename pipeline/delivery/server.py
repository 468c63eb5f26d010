"""HTTP model server: the deployed champion behind FastAPI, hot-reloaded when the deployment changes.

A *source* supplies the model: `load() -> (TFLiteModel, manifest)` and a cheap `current_version() -> str`.
`S3Source` follows champion/pointer.json in S3 (what `mlops deploy` writes); `RegistrySource` follows an MLflow
alias directly. A background thread polls `current_version()` every `reload_seconds` and, when it changed,
loads and smoke-tests the new model and swaps one reference: requests in flight finish on the model they
started with, none fail, and a broken new model is never swapped in (the old one keeps serving).

TFLite interpreters are not thread-safe, so each loaded model carries its own lock around inference.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from fastapi import Request  # module level: FastAPI resolves the endpoint's (postponed) annotation here

from pipeline.core.config import DeployConfig, Params
from pipeline.core.errors import StageError

log = logging.getLogger("pipeline.serve")


class ModelSource(Protocol):
    def load(self): ...  # -> (TFLiteModel, manifest dict)

    def current_version(self) -> str: ...


class S3Source:
    """The release named by s3://<bucket>/<prefix>/<model_name>/champion/pointer.json (sha256-verified)."""

    def __init__(self, cfg: DeployConfig, model_name: str):
        from pipeline.delivery import releases as deploy

        self.cfg, self.model_name = cfg, model_name
        self._s3 = deploy.s3_client(cfg)
        self.description = deploy.s3_url(cfg.bucket, deploy.pointer_key(cfg, model_name))

    def current_version(self) -> str:
        from pipeline.delivery import releases as deploy

        pointer = deploy.read_pointer(self.cfg, self.model_name, s3=self._s3)
        if pointer is None:
            raise StageError(f"nothing published at {self.description}; run `mlops deploy` first.")
        return str(pointer["version"])

    def load(self):
        from pipeline.delivery import releases as deploy
        from pipeline.ml.tflite import TFLiteModel

        with tempfile.TemporaryDirectory(prefix="serve-s3-") as tmp:
            path, manifest = deploy.fetch_current(self.cfg, self.model_name, tmp, s3=self._s3)
            model = TFLiteModel(path.read_bytes())  # bytes in memory: the temp dir can go
        return model, manifest


class RegistrySource:
    """The .tflite of MLflow's `model_name@alias` (the pyfunc logged by `mlops register`)."""

    def __init__(self, model_name: str, alias: str = "champion"):
        self.model_name, self.alias = model_name, alias
        self.description = f"models:/{model_name}@{alias}"

    def current_version(self) -> str:
        from pipeline.registry import store as registry

        mv = registry.version_by_alias(self.model_name, self.alias)
        if mv is None:
            raise StageError(f"{self.description} does not exist; approve a challenger first.")
        return str(mv.version)

    def load(self):
        from pipeline.delivery import releases as deploy
        from pipeline.core import io
        from pipeline.registry import store as registry
        from pipeline.ml.tflite import TFLiteModel

        for _ in range(3):  # the alias may move between the look-up and the download: retry until stable
            version = self.current_version()
            with tempfile.TemporaryDirectory(prefix="serve-mlflow-") as tmp:
                tflite = registry.download_tflite(self.model_name, self.alias, Path(tmp))
                if tflite is None:
                    raise StageError(f"{self.description} (v{version}) has no .tflite artifact")
                if self.current_version() != version:
                    continue
                data = tflite.read_bytes()
                class_names = deploy._find_labels(tflite, Path(tmp))
            model = TFLiteModel(data)
            mv = registry.version_by_alias(self.model_name, self.alias)
            metrics, lineage = deploy._version_tags(mv)
            manifest = {"model_name": self.model_name, "version": version, "sha256": io.sha256_bytes(data),
                        "bytes": len(data), "input_shape": list(model.input_shape),
                        "input_dtype": model.input_dtype.name, "class_names": class_names,
                        "metrics": metrics, "lineage": lineage, "source": self.description}
            return model, manifest
        raise StageError(f"{self.description} kept moving while loading; try again")


@dataclass
class Served:
    """One loaded model. Immutable once built; replaced as a whole on reload."""

    model: object
    manifest: dict
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version"))

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("class_names") or [])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        with self.lock:  # one interpreter, one caller at a time
            logits = self.model.predict(x)
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def _build(source) -> Served:
    """Load from the source and smoke-test before anything may serve it."""
    model, manifest = source.load()
    served = Served(model, dict(manifest))
    shape = tuple(model.input_shape)
    if manifest.get("input_shape") is not None and tuple(manifest["input_shape"]) != shape:
        raise StageError(f"v{served.version}: manifest input_shape {manifest['input_shape']} != model's {list(shape)}")
    probs = served.probabilities(np.full((1, *shape), 127.0, np.float32))
    if served.class_names and probs.shape[1] != len(served.class_names):
        raise StageError(f"v{served.version}: the model has {probs.shape[1]} outputs but "
                         f"{len(served.class_names)} class names")
    if not served.class_names:
        served.manifest["class_names"] = [str(i) for i in range(probs.shape[1])]
    if not np.all(np.isfinite(probs)):
        raise StageError(f"v{served.version}: the model returns non-finite outputs")
    return served


class ModelHolder:
    """Holds the Served model; `check()` swaps in a new one when the source's version changed."""

    def __init__(self, source):
        self.source = source
        self.current: Served = _build(source)
        self._reload_lock = threading.Lock()  # one reload at a time (poller vs POST /reload)
        self.last_check: float | None = None
        self.last_error: str | None = None

    def check(self, force: bool = False) -> dict:
        with self._reload_lock:
            before = self.current.version
            try:
                latest = str(self.source.current_version())
                self.last_check = time.time()
                if latest == before and not force:
                    self.last_error = None
                    return {"reloaded": False, "version": before}
                new = _build(self.source)
            except Exception as exc:  # noqa: BLE001 - keep serving the old model, report why
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("reload check failed; still serving v%s: %s", before, self.last_error)
                raise
            self.current = new  # the swap: a single reference assignment
            self.last_error = None
            if new.version != before:
                log.info("now serving v%s (was v%s)", new.version, before)
            return {"reloaded": new.version != before, "version": new.version, "previous_version": before}


class _Reloader(threading.Thread):
    def __init__(self, holder: ModelHolder, every: float):
        super().__init__(name="model-reloader", daemon=True)
        self.holder, self.every, self.stop = holder, every, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.holder.check()
            except Exception:  # noqa: BLE001 - logged in check(); retry next period
                pass


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_instances(payload, shape: tuple[int, ...]) -> np.ndarray:
    """Validate a decoded JSON body into a float32 (N, *shape) batch of 0–255 pixels, or raise RequestError."""
    if not isinstance(payload, dict):
        raise RequestError(400, 'the body must be a JSON object like {"instances": [...]}')
    if "instances" not in payload:
        raise RequestError(422, 'missing field "instances": a list of images')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, '"instances" must be a non-empty list of images')
    expected = f"{list(shape)} (or a flat list of {math.prod(shape)} numbers)"
    try:
        raw = np.asarray(instances)
    except ValueError:
        raise RequestError(400, f"instances have inconsistent shapes; each must be {expected}") from None
    if raw.dtype == object or raw.dtype.kind not in "iuf":
        raise RequestError(400, "instances must contain only numbers (pixel values 0–255)")
    x = raw.astype(np.float32)
    if x.shape[1:] == shape:
        pass
    elif x.ndim == 2 and x.shape[1] == math.prod(shape):
        x = x.reshape(len(x), *shape)
    elif len(shape) == 3 and shape[-1] == 1 and x.shape[1:] == shape[:-1]:
        x = x[..., None]
    else:
        raise RequestError(400, f"wrong instance shape {list(x.shape[1:])}; expected {expected}")
    if not np.all(np.isfinite(x)):
        raise RequestError(400, "instances contain NaN or infinite values")
    if x.min() < 0 or x.max() > 255:
        raise RequestError(400, f"pixel values must lie in 0–255, got {float(x.min()):g}…{float(x.max()):g}")
    return x


def create_app(source, cfg: DeployConfig | None = None, *, start_reloader: bool = True):
    """The FastAPI app serving `source`'s model. Loads it now (StageError if nothing can be served)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    cfg = cfg or DeployConfig()
    holder = ModelHolder(source)

    @asynccontextmanager
    async def lifespan(app):
        reloader = _Reloader(holder, cfg.reload_seconds) if start_reloader else None
        if reloader:
            reloader.start()
        try:
            yield
        finally:
            if reloader:
                reloader.stop.set()
                reloader.join(timeout=5)

    app = FastAPI(title="image classifier", lifespan=lifespan)
    app.state.holder = holder

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    def health():
        served = holder.current
        return {"status": "ok", "model_name": served.manifest.get("model_name"), "version": served.version,
                "input_shape": list(served.model.input_shape), "sha256": served.manifest.get("sha256"),
                "source": getattr(source, "description", type(source).__name__),
                "last_reload_error": holder.last_error}

    @app.post("/predict")
    async def predict(request: Request):
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return error(400, "invalid Content-Length header")
            if declared > cfg.max_body_bytes:
                return error(413, f"body of {declared} bytes exceeds the limit of {cfg.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > cfg.max_body_bytes:
                return error(413, f"body exceeds the limit of {cfg.max_body_bytes} bytes")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"the body is not valid JSON: {exc}")
        served = holder.current  # pin this request to one model, whatever reloads meanwhile
        try:
            x = parse_instances(payload, tuple(served.model.input_shape))
        except RequestError as exc:
            return error(exc.status, exc.message)
        probs = await run_in_threadpool(served.probabilities, x)
        idx = probs.argmax(axis=1)
        names = served.class_names
        return {"version": served.version, "predictions": idx.tolist(), "labels": [names[i] for i in idx],
                "probabilities": np.round(probs, 6).tolist()}

    @app.post("/reload")
    async def reload():
        try:
            result = await run_in_threadpool(holder.check)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse({"error": f"reload failed; still serving v{holder.current.version}: "
                                          f"{type(exc).__name__}: {exc}", "version": holder.current.version},
                                status_code=503)
        return result

    return app


def make_source(params: Params, source_kind: str):
    if source_kind == "s3":
        return S3Source(params.deploy, params.register_.model_name)
    if source_kind == "registry":
        return RegistrySource(params.register_.model_name, "champion")
    raise StageError(f"unknown model source {source_kind!r}; choose 's3' or 'registry'")


def serve(params: Params, source_kind: str = "s3", host: str | None = None, port: int | None = None) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(make_source(params, source_kind), params.deploy)
    uvicorn.run(app, host=host or params.deploy.serve_host, port=port or params.deploy.serve_port,
                log_level="info")
