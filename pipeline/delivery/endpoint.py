"""POST /predict as a pure ASGI handler: body in, micro-batched probabilities out.

At thousands of small requests per second FastAPI's routing, Request object and response machinery cost as much
as the request's own work, so /predict is answered by `PredictMiddleware`, a plain ASGI middleware in front of the
FastAPI router (inside Starlette's ServerErrorMiddleware, which still turns a crash into a 500). The other routes
(/health, /reload, /metrics, the OpenAPI docs) stay ordinary FastAPI endpoints. Every /predict answer carries its
request id (`X-Request-ID` header and `request_id` in the JSON: the client's own when it is a safe token, else a
uuid4 hex), the key under which `pipeline.delivery.capture` records a sampled answer for labelling later.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from pipeline.delivery.batcher import BatchFailed, MicroBatcher
from pipeline.delivery.capture import CaptureWriter
from pipeline.delivery.holder import ModelHolder, Served
from pipeline.delivery.inputs import RequestError, input_kind, parse_body
from pipeline.delivery.metrics import ServerMetrics

log = logging.getLogger(__name__)

ROUTE = "/predict"
INLINE_BODY_BYTES = 64 * 1024  # larger bodies are parsed/decoded off the event loop
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ClientGone(Exception):
    """The client disconnected before its body was read."""


def json_bytes(content: dict) -> bytes:
    """`content` as JSON (numpy arrays allowed)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


async def read_body(scope: dict, receive, limit: int) -> bytes:
    """The request body; RequestError 413 past `limit` bytes (declared or actually read), 400 for a bad length."""
    length = _header(scope, b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError(400, "invalid Content-Length header") from None
        if declared > limit:
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


def _header(scope: dict, name: bytes) -> str | None:
    """One request header (ASGI header names are lower-case), decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def request_id(scope: dict) -> str:
    """The client's X-Request-ID when it is a safe token (letters, digits, `._-`, at most 64), else a uuid4 hex."""
    given = _header(scope, b"x-request-id")
    return given if given is not None and _SAFE_ID.fullmatch(given) else uuid.uuid4().hex


def prediction(served: Served, probs: np.ndarray) -> dict:
    """The /predict answer for `probs` (N, K) of `served`."""
    idx = probs.argmax(axis=1)
    names = served.class_names
    return {
        "version": served.version,
        "predictions": idx.tolist(),
        "labels": [names[i] for i in idx],
        "probabilities": np.round(probs, 6),
    }


class PredictEndpoint:
    """Validates a /predict body, queues it on the micro-batcher pinned to the current model, answers."""

    def __init__(
        self,
        holder: ModelHolder,
        batcher: MicroBatcher,
        max_body_bytes: int,
        metrics: ServerMetrics,
        capture: CaptureWriter | None = None,
    ):
        """Serve `holder`'s models through `batcher`; offer each answer to `capture` (when set)."""
        self.holder, self.batcher, self.limit, self.metrics = holder, batcher, max_body_bytes, metrics
        self.capture = capture

    async def classify(self, scope: dict, receive, rid: str = "") -> tuple[str, dict]:
        """(input kind, answer) of one request `rid`; RequestError / BatchFailed / ClientGone propagate."""
        served = self.holder.current  # pin this request to one model, whatever reloads meanwhile
        content_type = _header(scope, b"content-type")
        kind = input_kind(content_type)
        self.batcher.arriving()  # a batch being gathered may wait for this request
        try:
            body = await read_body(scope, receive, self.limit)
            shape = tuple(served.model.input_shape)
            if len(body) <= INLINE_BODY_BYTES:
                x = parse_body(kind, content_type, body, shape)
            else:
                x = await run_in_threadpool(parse_body, kind, content_type, body, shape)
        except BaseException as exc:
            self.batcher.abandon()
            if isinstance(exc, RequestError):
                exc.kind = kind
            raise
        probs = await asyncio.wrap_future(self.batcher.submit(served, x, announced=True))
        if self.capture is not None:
            self.capture.offer(rid, served.version, x, probs)  # references only: the writer thread does the rest
        return kind, {**prediction(served, probs), "request_id": rid}

    async def answer(self, scope: dict, receive, rid: str | None = None) -> tuple[int, bytes]:
        """(status, JSON body) for one request (`rid`: its id, a fresh one if None), counted in the metrics."""
        started = time.perf_counter()
        rid = rid or uuid.uuid4().hex
        if scope["method"] != "POST":
            self.metrics.observe(ROUTE, 405, "unknown", started)
            return 405, json_bytes({"error": f"{scope['method']} /predict: use POST", "request_id": rid})
        try:
            kind, answer = await self.classify(scope, receive, rid)
        except RequestError as exc:
            self.metrics.observe(ROUTE, exc.status, exc.kind, started)
            return exc.status, json_bytes({"error": exc.message, "request_id": rid})
        except BatchFailed as exc:
            self.metrics.observe(ROUTE, 500, "unknown", started)
            return 500, json_bytes({"error": str(exc), "request_id": rid})
        except ClientGone:
            raise
        except Exception as exc:
            log.exception("/predict failed")
            self.metrics.observe(ROUTE, 500, "unknown", started)
            return 500, json_bytes({"error": f"internal error: {type(exc).__name__}: {exc}", "request_id": rid})
        self.metrics.observe(ROUTE, 200, kind, started, images=len(answer["predictions"]))
        return 200, json_bytes(answer)


class PredictMiddleware:
    """ASGI middleware: /predict goes to `endpoint`, every other request to the wrapped app."""

    def __init__(self, app, endpoint: PredictEndpoint):
        """Wrap `app` (the FastAPI router stack)."""
        self.app, self.endpoint = app, endpoint

    async def __call__(self, scope, receive, send) -> None:
        """Answer /predict here; pass anything else on."""
        if scope["type"] != "http" or scope["path"] != ROUTE:
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        try:
            status, body = await self.endpoint.answer(scope, receive, rid)
        except ClientGone:
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
