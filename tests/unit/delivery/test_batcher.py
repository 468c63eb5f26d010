"""The micro-batcher on real TFLite interpreters: every request gets its own rows, batches respect their bound and
their model version, a failing batch fails only its own requests."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pipeline.delivery.batcher import BatchFailed, MicroBatcher
from pipeline.delivery.holder import build_served
from pipeline.ml.tflite import TFLiteModel, softmax
from tests.unit.delivery.conftest import LocalSource

SHAPE = (8, 8, 1)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE)).astype(np.float32)


def _expected(path, x: np.ndarray) -> np.ndarray:
    return softmax(TFLiteModel(path).predict(x))


@pytest.fixture
def served(grey_models):
    return {v: build_served(LocalSource(grey_models, v), interpreters=2) for v in ("1", "2")}


class Recorder:
    """on_batch: the (images, requests) of every interpreter call."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, images: int, requests: int) -> None:
        with self.lock:
            self.calls.append((images, requests))


def test_concurrent_requests_each_get_their_own_rows_within_the_size_bound(served, grey_models):
    record = Recorder()
    batcher = MicroBatcher(max_images=8, max_wait_ms=20, threads=2, on_batch=record)
    requests = [_images(1 + i % 4, seed=i) for i in range(60)]  # 1–4 images each
    results: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def client(i: int) -> None:
        batcher.arriving()
        start.wait()
        results[i] = batcher.submit(served["1"], requests[i], announced=True).result(timeout=30)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    batcher.close()

    for x, probs in zip(requests, results, strict=True):
        assert probs.shape == (len(x), 3)
        np.testing.assert_allclose(probs, _expected(grey_models["1"], x), rtol=1e-5, atol=1e-6)
    assert sum(images for images, _ in record.calls) == sum(len(x) for x in requests)
    assert all(images <= 8 for images, _ in record.calls), record.calls
    assert max(n for _, n in record.calls) > 1, "concurrent requests were never batched together"
    assert len(record.calls) < len(requests)


def test_an_oversized_request_runs_alone_in_calls_of_at_most_the_bound(served, grey_models):
    record = Recorder()
    batcher = MicroBatcher(max_images=4, max_wait_ms=0, threads=1, on_batch=record)
    x = _images(10, seed=5)
    probs = batcher.submit(served["1"], x).result(timeout=30)
    batcher.close()
    np.testing.assert_allclose(probs, _expected(grey_models["1"], x), rtol=1e-5, atol=1e-6)
    assert record.calls == [(4, 1), (4, 1), (2, 1)]


def test_each_request_stays_on_its_own_model_version(served, grey_models):
    batcher = MicroBatcher(max_images=64, max_wait_ms=20, threads=1)
    xs = [_images(2, seed=10 + i) for i in range(12)]
    for _ in xs:
        batcher.arriving()
    futures = [batcher.submit(served["1" if i % 3 else "2"], x, announced=True) for i, x in enumerate(xs)]
    for i, (x, future) in enumerate(zip(xs, futures, strict=True)):
        version = "1" if i % 3 else "2"
        np.testing.assert_allclose(future.result(timeout=30), _expected(grey_models[version], x), rtol=1e-5, atol=1e-6)
    batcher.close()


def test_a_failing_batch_fails_only_its_own_requests(served, grey_models):
    batcher = MicroBatcher(max_images=64, max_wait_ms=0, threads=1)
    bad = batcher.submit(served["1"], np.zeros((1, 4, 4, 1), np.float32))  # the interpreter refuses this shape
    with pytest.raises(BatchFailed, match="inference failed for this batch of 1 requests on v1"):
        bad.result(timeout=30)
    good = _images(3, seed=1)
    np.testing.assert_allclose(batcher.submit(served["1"], good).result(timeout=30),
                               _expected(grey_models["1"], good), rtol=1e-5, atol=1e-6)
    batcher.close()
    with pytest.raises(BatchFailed, match="shutting down"):
        batcher.submit(served["1"], good)


def test_a_lone_request_does_not_wait_for_the_gathering_window(served):
    import time

    batcher = MicroBatcher(max_images=64, max_wait_ms=2000, threads=1)
    batcher.arriving()
    started = time.perf_counter()
    batcher.submit(served["1"], _images(1, seed=0), announced=True).result(timeout=30)
    assert time.perf_counter() - started < 1.0  # nobody else on the way: no 2 s wait
    batcher.close()
