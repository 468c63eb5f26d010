"""The FastAPI app of the model server: GET /health, POST /predict, POST /reload, GET /metrics.

Every request body is read under `deploy.max_body_bytes` (declared or actually streamed) and validated into a
float32 batch of 0–255 pixels (`pipeline.delivery.inputs`: JSON, PNG/JPEG, multipart files or .npy) before it
reaches the model; anything malformed is a 4xx with a JSON {"error": ...} naming the problem. Each /predict
request is pinned to the model that was current when it arrived, so a reload meanwhile never fails it; valid
requests are micro-batched (`pipeline.delivery.batcher`) onto a pool of interpreters; a sample of the answers is
captured for the monitor (`pipeline.delivery.capture`, when configured), flushed at shutdown. /predict is a plain ASGI
handler in front of FastAPI (`pipeline.delivery.endpoint`: the framework's per-request cost is too high for it);
/metrics is Prometheus text.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pipeline.core.config import CaptureConfig, DeployConfig
from pipeline.delivery.batcher import MicroBatcher
from pipeline.delivery.capture import CaptureWriter, sink_for
from pipeline.delivery.endpoint import PredictEndpoint, PredictMiddleware, json_bytes
from pipeline.delivery.holder import ModelHolder, Reloader
from pipeline.delivery.metrics import CONTENT_TYPE, ServerMetrics
from pipeline.delivery.peers import ReloadPeers


def _json(content: dict, status: int = 200) -> Response:
    return Response(json_bytes(content), status, media_type="application/json")


def _lifespan(
    holder: ModelHolder,
    batcher: MicroBatcher,
    peers: ReloadPeers | None,
    every: float,
    reloader: bool,
    capture: CaptureWriter | None = None,
):
    """The app's lifespan: the reloader (when `reloader`) and the peers' watcher run while the app does.

    At the end the inference threads stop and the capture flushes what it has buffered.
    """

    @asynccontextmanager
    async def lifespan(app):
        """Run the reloader for as long as the app runs; stop the inference threads and flush the capture at the end."""
        poller = Reloader(holder, every, peers.broadcast if peers else None) if reloader else None
        for thread in (poller, peers):
            if thread:
                thread.start()
        try:
            yield
        finally:
            if poller:
                poller.stop.set()
                poller.join(timeout=5)
            if peers:
                peers.close()
            batcher.close()
            if capture:
                capture.close()

    return lifespan


def _add_health(app: FastAPI, holder: ModelHolder, source, metrics: ServerMetrics) -> None:
    @app.get("/health")
    async def health() -> Response:
        """The served model's name, version, input shape, sha256 and source, and the last reload error."""
        started = time.perf_counter()
        served = holder.current
        body = {
            "status": "ok",
            "model_name": served.manifest.get("model_name"),
            "version": served.version,
            "input_shape": list(served.model.input_shape),
            "sha256": served.manifest.get("sha256"),
            "source": getattr(source, "description", type(source).__name__),
            "last_reload_error": holder.last_error,
        }
        metrics.observe("/health", 200, "none", started)
        return _json(body)


def _add_reload(app: FastAPI, holder: ModelHolder, metrics: ServerMetrics, peers: ReloadPeers | None) -> None:
    @app.post("/reload")
    async def reload() -> Response:
        """Reload now if the source names another version (503, old model kept, when that fails).

        With several worker processes, every other worker checks its source too before the answer, which then
        lists each worker's version under "workers".
        """
        started = time.perf_counter()
        try:
            result = await run_in_threadpool(holder.check)
        except Exception as exc:  # noqa: BLE001
            metrics.observe("/reload", 503, "none", started)
            return JSONResponse(
                {
                    "error": f"reload failed; still serving v{holder.current.version}: {type(exc).__name__}: {exc}",
                    "version": holder.current.version,
                },
                status_code=503,
            )
        if peers:
            result["workers"] = await run_in_threadpool(peers.broadcast)
        metrics.observe("/reload", 200, "none", started)
        return _json(result)


def _add_metrics(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text exposition of the server's metrics (every worker process's, in multiprocess mode)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)


def create_app(
    source,
    cfg: DeployConfig | None = None,
    *,
    start_reloader: bool = True,
    peers_dir: Path | None = None,
    capture: tuple[CaptureConfig, str] | None = None,
) -> FastAPI:
    """The FastAPI app serving `source`'s model. Loads it now (StageError if nothing can be served).

    Args:
        source: the model source (`pipeline.delivery.server`).
        cfg: the deploy: section (serving keys).
        start_reloader: poll the source every `cfg.reload_seconds` while the app runs.
        peers_dir: the directory shared by the worker processes of one server (`pipeline.delivery.peers`).
        capture: (the capture: section, where captures go: `pipeline.delivery.capture.location`); None: no capture.
    """
    cfg = cfg or DeployConfig()
    metrics = ServerMetrics()
    holder = ModelHolder(
        source,
        cfg.serve_threads,
        on_swap=lambda old, new: metrics.served(
            new.manifest.get("model_name"), old.version if old else None, new.version
        ),
        on_failure=lambda _error: metrics.reload_failed(),
    )
    batcher = MicroBatcher(cfg.batch_max_images, cfg.batch_max_wait_ms, cfg.serve_threads, on_batch=metrics.batch)
    peers = ReloadPeers(peers_dir, holder) if peers_dir else None
    writer = CaptureWriter(capture[0], sink_for(capture[1], cfg), observer=metrics.capture) if capture else None
    lifespan = _lifespan(holder, batcher, peers, cfg.reload_seconds, start_reloader, writer)
    app = FastAPI(title="image classifier", lifespan=lifespan)
    app.state.holder, app.state.batcher, app.state.metrics, app.state.capture = holder, batcher, metrics, writer
    _add_health(app, holder, source, metrics)
    endpoint = PredictEndpoint(holder, batcher, cfg.max_body_bytes, metrics, writer)
    app.add_middleware(PredictMiddleware, endpoint=endpoint)
    _add_reload(app, holder, metrics, peers)
    _add_metrics(app, metrics)
    return app
