"""The capture writer: the agreed .npz format, sampling, the bounded buffer, the byte budget, flushing and retries.

Flushing by time uses a fake clock and the writer without its thread (`start=False`): no sleeps, no timed
assertions.
"""

from __future__ import annotations

import io
import random
import re
import threading

import numpy as np
import pytest

from pipeline.core.config import CaptureConfig, ConfigError, Params, load_params
from pipeline.delivery import capture as cap
from pipeline.delivery.capture import CaptureWriter, FolderSink, Record, encode_batch
from tests.helpers_s3 import ROOT

NAME = re.compile(r"capture-\d{8}T\d{6}Z-[0-9a-f]{8}\.npz")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemorySink:
    """Keeps what it is given; fails the next `fail` puts."""

    def __init__(self, fail: int = 0) -> None:
        self.files: dict[str, bytes] = {}
        self.fail = fail

    def put(self, name: str, data: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("S3 is down")
        self.files[name] = data


def _cfg(**changes) -> CaptureConfig:
    base = {
        "enabled": True,
        "sample_rate": 1.0,
        "batch_images": 4,
        "flush_seconds": 10.0,
        "max_bytes_per_hour": 10**9,
        "max_buffer_images": 100,
    }
    return CaptureConfig(**{**base, **changes})


def _writer(sink=None, clock=None, **changes) -> CaptureWriter:
    return CaptureWriter(
        _cfg(**changes), sink or MemorySink(), rng=random.Random(0), clock=clock or Clock(), start=False
    )


def _batch(n: int, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, 1)).astype(np.float32)
    probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
    return x, probs


def _load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_encode_round_trip_is_the_agreed_format():
    (x1, p1), (x2, p2) = _batch(1, seed=1), _batch(3, seed=2)
    records = [Record("abc", "7", x1, p1, time=1.5), Record("req", "8", x2.astype(np.uint8), p2, time=2.5)]
    got = _load(encode_batch(records))
    assert set(got) == {"x", "request_id", "pred", "probs", "version", "time"}
    assert got["x"].dtype == np.uint8 and got["x"].shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(got["x"], np.concatenate([x1, x2]).astype(np.uint8))
    assert got["request_id"].dtype.kind == "U" and got["request_id"].tolist() == ["abc", "req-0", "req-1", "req-2"]
    assert got["pred"].dtype == np.int64 and got["pred"].tolist() == np.concatenate([p1, p2]).argmax(1).tolist()
    assert got["probs"].dtype == np.float32 and got["probs"].shape == (4, 3)
    assert got["version"].dtype.kind == "U" and got["version"].tolist() == ["7", "8", "8", "8"]
    assert got["time"].dtype == np.float64 and got["time"].tolist() == [1.5, 2.5, 2.5, 2.5]


def test_float_pixels_are_rounded_and_clipped_to_uint8():
    x = np.array([[[[-3.0], [0.4]], [[254.6], [300.0]]]], np.float32)
    got = _load(encode_batch([Record("r", "1", x, np.ones((1, 2), np.float32))]))["x"]
    assert got.tolist() == [[[[0], [0]], [[255], [255]]]]


def test_sampling_rate_is_respected():
    writer = _writer(sample_rate=0.2, max_buffer_images=10**6, batch_images=10**6)
    x, probs = _batch(1)
    kept = sum(writer.offer(f"r{i}", "1", x, probs) for i in range(5000))
    assert 900 <= kept <= 1100  # binomial(5000, 0.2): sd 28, so ±100 is over 3.5 sd
    assert _writer(sample_rate=0.0).offer("r", "1", x, probs) is False


def test_full_buffer_drops_and_counts_without_blocking():
    writer = _writer(max_buffer_images=5, batch_images=100)
    x, probs = _batch(2)
    done = threading.Event()

    def offer_all() -> None:
        for i in range(10):
            writer.offer(f"r{i}", "1", x, probs)
        done.set()

    threading.Thread(target=offer_all, daemon=True).start()
    assert done.wait(30), "offer blocked on a full buffer"
    assert writer.counts["dropped:queue_full"] == 16  # 2 requests (4 images) fit, 8 requests (16 images) dropped
    writer.flush()
    assert writer.counts["images"] == 4


def test_byte_budget_is_enforced_per_hour():
    clock = Clock()
    x, probs = _batch(1)
    per_request = x.size + probs.size * 4  # 64 uint8 pixels + 3 float32
    writer = _writer(clock=clock, max_bytes_per_hour=per_request * 3, batch_images=100)
    assert [writer.offer(f"r{i}", "1", x, probs) for i in range(5)] == [True, True, True, False, False]
    assert writer.counts["dropped:budget"] == 2
    clock.now += cap.HOUR
    assert writer.offer("later", "1", x, probs) is True


def test_flush_on_size_and_on_time():
    clock, sink = Clock(), MemorySink()
    writer = _writer(sink, clock, batch_images=4, flush_seconds=10.0)
    x, probs = _batch(2)
    writer.offer("a", "1", x, probs)
    assert writer.tick() is False and not sink.files
    writer.offer("b", "1", x, probs)  # 4 images: due by size
    assert writer.tick() is True and len(sink.files) == 1
    writer.offer("c", "1", x[:1], probs[:1])
    clock.now += 9.9
    assert writer.tick() is False
    clock.now += 0.2  # the oldest buffered image is now 10.1 s old
    assert writer.tick() is True and len(sink.files) == 2
    assert all(NAME.fullmatch(name) for name in sink.files)
    assert writer.counts["flushes"] == 2 and writer.counts["images"] == 5
    assert writer.counts["bytes"] == sum(map(len, sink.files.values()))


def test_failed_upload_is_retried_and_counted():
    clock, sink = Clock(), MemorySink(fail=2)
    writer = _writer(sink, clock)
    x, probs = _batch(4)
    writer.offer("a", "1", x, probs)
    writer.flush()
    assert writer.counts["flush_errors"] == 1 and not sink.files
    clock.now += 10
    assert writer.tick() is True  # a pending file is due for a retry even with nothing buffered
    assert writer.counts["flush_errors"] == 2 and not sink.files
    clock.now += 10
    writer.tick()
    assert len(sink.files) == 1 and _load(next(iter(sink.files.values())))["request_id"].tolist()[0] == "a-0"
    assert writer.counts["images"] == 4 and "dropped:upload" not in writer.counts


def test_upload_dropped_after_max_attempts():
    sink = MemorySink(fail=10**6)
    writer = _writer(sink)
    x, probs = _batch(4)
    writer.offer("a", "1", x, probs)
    for _ in range(cap.MAX_ATTEMPTS):
        writer.flush()
    assert writer.counts["flush_errors"] == cap.MAX_ATTEMPTS and writer.counts["dropped:upload"] == 4
    writer.flush()
    assert writer.counts["flush_errors"] == cap.MAX_ATTEMPTS  # nothing left to retry


def test_different_shapes_go_to_separate_files():
    sink = MemorySink()
    writer = _writer(sink, batch_images=100)
    writer.offer("a", "1", *_batch(1, k=3))
    writer.offer("b", "2", *_batch(1, k=4))
    writer.flush()
    assert sorted(_load(d)["probs"].shape[1] for d in sink.files.values()) == [3, 4]


def test_thread_flushes_on_close_and_folder_sink_is_atomic(tmp_path):
    writer = CaptureWriter(_cfg(batch_images=1000, flush_seconds=3600), FolderSink(tmp_path / "captured"))
    writer.offer("a", "1", *_batch(2))
    writer.close()
    files = list((tmp_path / "captured").iterdir())
    assert len(files) == 1 and NAME.fullmatch(files[0].name)
    assert _load(files[0].read_bytes())["request_id"].tolist() == ["a-0", "a-1"]


def test_location_and_config(tmp_path):
    assert cap.location(Params.model_validate({"monitor": {"inbox": "s3://box/in/"}})) == "s3://box/in/captured"
    local = Params.model_validate({"paths": {"incoming": str(tmp_path / "inc")}})
    assert cap.location(local) == str(tmp_path / "inc" / "captured")
    assert isinstance(cap.sink_for(cap.location(local), local.deploy), FolderSink)
    assert Params().capture.enabled is False and load_params(ROOT / "params.yaml").capture.enabled is True
    with pytest.raises(ValueError):
        CaptureConfig(sample_rate=1.5)
    bad = tmp_path / "params.yaml"
    bad.write_text("capture:\n  sample_rat: 0.1\n")
    with pytest.raises(ConfigError):
        load_params(bad)
