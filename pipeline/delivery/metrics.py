"""Prometheus metrics of the model server, exposed at GET /metrics in the text format.

Requests by route, status and input kind; request latency; micro-batch sizes; images classified; the served model
version (a gauge that is 1 for the version served, label `version`); reload outcomes; the capture's images and bytes
written, files written (flushes), failed writes and dropped images by reason. Each app gets its own
registry. With several uvicorn worker processes the server sets PROMETHEUS_MULTIPROC_DIR (a temp dir it creates)
before the workers start: prometheus_client then keeps every process's values in files there, and /metrics,
answered by whichever worker, aggregates all of them.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from pipeline.core.io import pid_alive

disable_created_metrics()  # no *_created series: they double the exposition and say nothing here

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The server's metric families, in one registry (multiprocess-aware exposition)."""

    def __init__(self) -> None:
        """Create the metric families in a fresh registry."""
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "mlops_serve_requests", "HTTP requests answered", ["route", "status", "input"], registry=reg
        )
        self.latency = Histogram(
            "mlops_serve_request_seconds",
            "Request latency in seconds",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_images = Histogram(
            "mlops_serve_batch_images", "Images per interpreter call (micro-batch size)", buckets=BATCH_BUCKETS,
            registry=reg,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "mlops_serve_batch_requests", "Requests per micro-batch", buckets=BATCH_BUCKETS, registry=reg
        )
        self.images = Counter("mlops_serve_images", "Images classified", registry=reg)
        self.model = Gauge(
            "mlops_serve_model_version", "1 for the model version served (label version)", ["model_name", "version"],
            multiprocess_mode="livemax", registry=reg,
        )  # fmt: skip
        self.reloads = Counter("mlops_serve_reloads", "Model reloads by result (ok, failed)", ["result"], registry=reg)
        self._add_capture(reg)

    def _add_capture(self, reg: CollectorRegistry) -> None:
        """The capture's counters (`pipeline.delivery.capture`), by the writer's event names."""
        self.capture_counters = {
            event: Counter(f"mlops_serve_capture_{event}", text, registry=reg)
            for event, text in (
                ("images", "Captured images written"),
                ("bytes", "Bytes of capture files written"),
                ("flushes", "Capture files written"),
                ("flush_errors", "Failed capture file writes (retried)"),
            )
        }
        self.capture_dropped = Counter(
            "mlops_serve_capture_dropped", "Sampled images not captured, by reason (queue_full, budget, upload)",
            ["reason"], registry=reg,
        )  # fmt: skip

    def capture(self, event: str, count: int = 1, reason: str = "") -> None:
        """Count a capture event: images, bytes, flushes, flush_errors, or dropped (with its reason)."""
        if event == "dropped":
            self.capture_dropped.labels(reason).inc(count)
        else:
            self.capture_counters[event].inc(count)

    def observe(self, route: str, status: int, kind: str, started: float, images: int = 0) -> None:
        """Count one answered request (and its images) and its latency since `started` (time.perf_counter())."""
        self.requests.labels(route, str(status), kind).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)
        if images:
            self.images.inc(images)

    def batch(self, images: int, requests: int) -> None:
        """Record one interpreter call of `images` images for `requests` requests."""
        self.batch_images.observe(images)
        self.batch_requests.observe(requests)

    def served(self, model_name: str | None, old_version: str | None, new_version: str) -> None:
        """The served version changed from `old_version` (None at start) to `new_version`."""
        name = model_name or ""
        if old_version is not None:
            self.model.labels(name, old_version).set(0)
            self.reloads.labels("ok").inc()
        self.model.labels(name, new_version).set(1)

    def reload_failed(self) -> None:
        """A reload check failed (the old model serves on)."""
        self.reloads.labels("failed").inc()

    def exposition(self) -> bytes:
        """The text exposition: all worker processes in multiprocess mode, else this registry."""
        if directory := os.environ.get(MULTIPROC_ENV):
            forget_dead_workers(directory)
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def forget_dead_workers(directory: str) -> list[int]:
    """Drop the live gauges of worker processes that are gone (a crashed worker's version gauge would linger).

    Counters and histograms of dead workers stay: what they answered still counts. Returns the pids forgotten.
    """
    pids = set()
    for name in os.listdir(directory):
        stem, _, digits = name.removesuffix(".db").rpartition("_")
        if stem.startswith("gauge_live") and digits.isdigit():
            pids.add(int(digits))
    dead = sorted(pid for pid in pids if not pid_alive(pid))
    for pid in dead:
        mark_process_dead(pid, directory)
    return dead
