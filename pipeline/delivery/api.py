"""The FastAPI app of the model server: GET /health, POST /predict, POST /reload.

Every request body is read under `deploy.max_body_bytes` (declared or actually streamed) and validated into a
float32 batch of 0–255 pixels before it reaches the model; anything malformed is a 4xx with a JSON
{"error": ...} naming the problem. Each /predict request is pinned to the model that was current when it
arrived, so a reload meanwhile never fails it.
"""

from __future__ import annotations

import json
import math
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request  # module level: FastAPI resolves the endpoints' (postponed) annotations here
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipeline.core.config import DeployConfig
from pipeline.delivery.holder import ModelHolder, Reloader, Served


class RequestError(Exception):
    """A client error: the HTTP status and the message returned as {"error": message}."""

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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; RequestError 413 past `limit` bytes (declared or actually read), 400 for a bad length."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError(400, "invalid Content-Length header") from None
        if declared > limit:
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
    return bytes(body)


def decode_json(body: bytes):
    """The decoded JSON body, or RequestError 400."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _prediction(served: Served, probs: np.ndarray) -> dict:
    idx = probs.argmax(axis=1)
    names = served.class_names
    return {
        "version": served.version,
        "predictions": idx.tolist(),
        "labels": [names[i] for i in idx],
        "probabilities": np.round(probs, 6).tolist(),
    }


def _lifespan(holder: ModelHolder, every: float, start_reloader: bool):
    """The app's lifespan: the background reloader runs while the app does (when `start_reloader`)."""

    @asynccontextmanager
    async def lifespan(app):
        """Run the reloader for as long as the app runs."""
        reloader = Reloader(holder, every) if start_reloader else None
        if reloader:
            reloader.start()
        try:
            yield
        finally:
            if reloader:
                reloader.stop.set()
                reloader.join(timeout=5)

    return lifespan


def _add_health(app: FastAPI, holder: ModelHolder, source) -> None:
    @app.get("/health")
    def health():
        """The served model's name, version, input shape, sha256 and source, and the last reload error."""
        served = holder.current
        return {
            "status": "ok",
            "model_name": served.manifest.get("model_name"),
            "version": served.version,
            "input_shape": list(served.model.input_shape),
            "sha256": served.manifest.get("sha256"),
            "source": getattr(source, "description", type(source).__name__),
            "last_reload_error": holder.last_error,
        }


def _add_predict(app: FastAPI, holder: ModelHolder, max_body_bytes: int) -> None:
    @app.post("/predict")
    async def predict(request: Request):
        """Class predictions, labels and probabilities for {"instances": [...]}."""
        try:
            payload = decode_json(await read_body(request, max_body_bytes))
            served = holder.current  # pin this request to one model, whatever reloads meanwhile
            x = parse_instances(payload, tuple(served.model.input_shape))
        except RequestError as exc:
            return _error(exc.status, exc.message)
        probs = await run_in_threadpool(served.probabilities, x)
        return _prediction(served, probs)


def _add_reload(app: FastAPI, holder: ModelHolder) -> None:
    @app.post("/reload")
    async def reload():
        """Reload now if the source names another version (503, old model kept, when that fails)."""
        try:
            result = await run_in_threadpool(holder.check)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse(
                {
                    "error": f"reload failed; still serving v{holder.current.version}: {type(exc).__name__}: {exc}",
                    "version": holder.current.version,
                },
                status_code=503,
            )
        return result


def create_app(source, cfg: DeployConfig | None = None, *, start_reloader: bool = True) -> FastAPI:
    """The FastAPI app serving `source`'s model. Loads it now (StageError if nothing can be served)."""
    cfg = cfg or DeployConfig()
    holder = ModelHolder(source)
    app = FastAPI(title="image classifier", lifespan=_lifespan(holder, cfg.reload_seconds, start_reloader))
    app.state.holder = holder
    _add_health(app, holder, source)
    _add_predict(app, holder, cfg.max_body_bytes)
    _add_reload(app, holder)
    return app
