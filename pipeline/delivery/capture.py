"""Capture: a sample of the /predict requests the server answers, recorded off the request path for the monitor.

`CaptureWriter.offer` is all a request does: a sampling draw, a byte-budget check and a non-blocking append of
references (the request's input batch and its probabilities) to a bounded buffer. A background thread per worker
process turns buffered records into one `.npz` per flush (`encode_batch`) and hands it to a sink: `FolderSink`
(temp file + rename) or `S3Sink` (one put_object of the finished bytes). It flushes when `batch_images` images are
buffered, when the oldest is `flush_seconds` old, and on close (the app's shutdown). A failed write is logged,
counted and retried on the next flushes (`MAX_ATTEMPTS` in all, at most `MAX_PENDING` files held), never raised
into a request. Sampled images that cannot be kept are dropped and counted by reason: `queue_full`
(`max_buffer_images` buffered), `budget` (`max_bytes_per_hour` of raw pixels + probabilities reserved this hour),
`upload` (every attempt failed).

Format (agreed with the monitor; `capture-<UTC yyyymmddTHHMMSSZ>-<uuid8>.npz`): `x` uint8 (N,H,W,C) as the model
saw it before scaling; `request_id` (N,) str (the request's id, `<id>-<i>` per image when it sent several);
`pred` (N,) int64; `probs` (N,K) float32; `version` (N,) str; `time` (N,) float64 unix seconds. No labels.
Written under `<monitor.inbox>/captured/` (S3), else `<paths.incoming>/captured/` (`location`).
"""

from __future__ import annotations

import io as _bytes_io
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.core import io
from pipeline.core.config import CaptureConfig, DeployConfig, Params

log = logging.getLogger(__name__)

CAPTURED = "captured"
MAX_ATTEMPTS = 3  # writes of one file before its images are dropped (reason "upload")
MAX_PENDING = 8  # failed files kept for a retry; beyond, the oldest is dropped
HOUR = 3600.0


@dataclass(frozen=True)
class Record:
    """One sampled request: its input batch (N,H,W,C) and outputs (N,K), by reference."""

    request_id: str
    version: str
    x: np.ndarray
    probs: np.ndarray
    time: float = field(default_factory=time.time)

    def ids(self) -> list[str]:
        """One id per image: the request id, or `<id>-<i>` when the request sent several images."""
        return [self.request_id] if len(self.x) == 1 else [f"{self.request_id}-{i}" for i in range(len(self.x))]


def _uint8(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.uint8 else np.clip(np.rint(x), 0, 255).astype(np.uint8)


def encode_batch(records: Sequence[Record]) -> bytes:
    """The agreed .npz of `records`, which share one input shape and class count. Uncompressed: zlib cost CPU on the
    serving cores and saved little on real images (bench/serving_capture.py).
    """
    buffer = _bytes_io.BytesIO()
    np.savez(
        buffer,
        x=np.concatenate([_uint8(r.x) for r in records]),
        request_id=np.array([i for r in records for i in r.ids()], dtype=str),
        pred=np.concatenate([r.probs.argmax(axis=1) for r in records]).astype(np.int64),
        probs=np.concatenate([r.probs for r in records]).astype(np.float32),
        version=np.array([r.version for r in records for _ in range(len(r.x))], dtype=str),
        time=np.array([r.time for r in records for _ in range(len(r.x))], dtype=np.float64),
    )
    return buffer.getvalue()


def capture_name(now: datetime | None = None) -> str:
    """`capture-<UTC yyyymmddTHHMMSSZ>-<uuid8>.npz`."""
    return f"capture-{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.npz"


class Sink(Protocol):
    """Where finished capture files go."""

    def put(self, name: str, data: bytes) -> None:
        """Store `data` as `name`, atomically; raise on failure."""


class FolderSink:
    """Files in a local folder (created when needed), each written to a temp name and renamed."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def put(self, name: str, data: bytes) -> None:
        """Write `folder/name` atomically."""
        with io.atomic_path(self.folder / name) as tmp:
            tmp.write_bytes(data)


class S3Sink:
    """Objects under s3://bucket/prefix/ (one verified put_object each); credentials from the environment only."""

    def __init__(self, cfg: DeployConfig, uri: str):
        from pipeline.delivery.s3 import parse_s3_url

        bucket, prefix = parse_s3_url(uri)
        self.cfg, self.bucket, self.prefix = cfg.model_copy(update={"bucket": bucket}), bucket, prefix.strip("/")
        self._s3 = None

    def put(self, name: str, data: bytes) -> None:
        """One put_object of `data` at `<prefix>/<name>` (the client is made on first use)."""
        from pipeline.delivery.s3 import put_verified, s3_client

        if self._s3 is None:
            self._s3 = s3_client(self.cfg)
        put_verified(self._s3, self.bucket, f"{self.prefix}/{name}".lstrip("/"), data, "application/octet-stream")


def location(params: Params) -> str:
    """Where captures go: `<monitor.inbox>/captured` (s3://) or the absolute `<paths.incoming>/captured` folder."""
    if params.monitor.inbox:
        return f"{params.monitor.inbox.rstrip('/')}/{CAPTURED}"
    return str(Path(params.paths.incoming, CAPTURED).resolve())


def sink_for(where: str, cfg: DeployConfig) -> Sink:
    """The sink of a `location`: S3 for s3:// URIs (endpoint from `cfg` / AWS_ENDPOINT_URL), else a folder."""
    return S3Sink(cfg, where) if where.startswith("s3://") else FolderSink(Path(where))


@dataclass
class _File:
    name: str
    data: bytes
    images: int
    attempts: int = 0


def _groups(records: list[Record]) -> list[list[Record]]:
    """`records` split by input shape and class count (a reload may change them): one file each."""
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        groups.setdefault((r.x.shape[1:], r.probs.shape[1:]), []).append(r)
    return list(groups.values())


class CaptureWriter:
    """The sampler, bounded buffer and background writer of one worker process (see the module docstring).

    `observer(event, count, reason)` hears of "images" and "bytes" written, "flushes" (files written),
    "flush_errors" and "dropped" (with its reason); `counts` keeps the same totals ("dropped:<reason>").
    """

    def __init__(
        self,
        cfg: CaptureConfig,
        sink: Sink,
        *,
        observer: Callable[[str, int, str], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ):
        """Start the writer thread (unless `start` is False: then `tick`/`flush` are called by hand)."""
        self.cfg, self.sink, self.observer = cfg, sink, observer
        self._rng, self._clock = rng or random.Random(), clock
        self.counts: Counter[str] = Counter()
        self._cond, self._flushing = threading.Condition(), threading.Lock()
        self._buffer: list[Record] = []
        self._images = 0
        self._oldest: float | None = None  # clock() when the oldest buffered record came
        self._window, self._spent = clock(), 0
        self._pending: list[_File] = []
        self._last_attempt = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        if start:
            self._thread.start()

    def _count(self, event: str, n: int = 1, reason: str = "") -> None:
        self.counts[f"{event}:{reason}" if reason else event] += n
        if self.observer:
            self.observer(event, n, reason)

    def offer(self, request_id: str, version: str, x: np.ndarray, probs: np.ndarray) -> bool:
        """Maybe record one answered request (never blocks, never raises); True when it was buffered."""
        if self._rng.random() >= self.cfg.sample_rate:
            return False
        n, size = len(x), x.size + probs.size * 4  # bytes as stored: uint8 pixels, float32 probabilities
        with self._cond:
            reason = self._refusal(n, size)
            if not reason:
                self._buffer.append(Record(request_id, version, x, probs))
                self._images += n
                self._spent += size
                self._oldest = self._oldest or self._clock()
                if self._images >= self.cfg.batch_images:
                    self._cond.notify()
        if reason:
            self._count("dropped", n, reason)
        return not reason

    def _refusal(self, n: int, size: int) -> str:
        """Why `n` images of `size` raw bytes cannot be buffered now ('' when they can); holds the lock."""
        if self._images + n > self.cfg.max_buffer_images:
            return "queue_full"
        now = self._clock()
        if now - self._window >= HOUR:
            self._window, self._spent = now, 0
        return "budget" if self._spent + size > self.cfg.max_bytes_per_hour else ""

    def due(self) -> bool:
        """True when a flush is due: enough images, the oldest buffered too old, or a failed file to retry."""
        now, wait = self._clock(), self.cfg.flush_seconds
        with self._cond:
            if self._images >= self.cfg.batch_images or (self._oldest and now - self._oldest >= wait):
                return True
        return bool(self._pending) and now - self._last_attempt >= wait

    def tick(self) -> bool:
        """Flush when `due`; True when it did."""
        if self.due():
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Encode what is buffered and write it, after retrying files that failed before."""
        with self._flushing:
            with self._cond:
                records, self._buffer, self._images, self._oldest = self._buffer, [], 0, None
            files = self._pending + [_File(capture_name(), encode_batch(g), sum(map(len, (r.x for r in g))))
                                     for g in _groups(records)]  # fmt: skip
            self._pending = []
            self._last_attempt = self._clock()
            for file in files:
                self._write(file)

    def _write(self, file: _File) -> None:
        """Hand one file to the sink; on failure keep it for a retry, or drop it after MAX_ATTEMPTS."""
        try:
            self.sink.put(file.name, file.data)
        except Exception as exc:  # noqa: BLE001 - any sink failure is counted and retried, never raised
            file.attempts += 1
            self._count("flush_errors")
            log.warning("capture: writing %s failed (attempt %d): %s", file.name, file.attempts, exc)
            self._pending.append(file)
            while self._pending and (self._pending[0].attempts >= MAX_ATTEMPTS or len(self._pending) > MAX_PENDING):
                self._count("dropped", self._pending.pop(0).images, "upload")
            return
        self._count("flushes")
        self._count("images", file.images)
        self._count("bytes", len(file.data))

    def _run(self) -> None:
        """The writer thread: wait until a flush may be due, flush when it is, until `close`."""
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait(timeout=min(self.cfg.flush_seconds, 1.0))
            if not self._stop.is_set():
                self.tick()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and flush what is buffered (a clean shutdown loses nothing buffered)."""
        self._stop.set()
        with self._cond:
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.flush()
