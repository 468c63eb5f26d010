"""The real app on a real TFLite model: every bad body gets its 4xx naming the problem, bad requests never disturb
concurrent good ones, and /metrics exposes the counters and moves with the requests."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from pipeline.ml.tflite import TFLiteModel, softmax
from tests.unit.delivery.conftest import LocalSource, make_client

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")

LIMIT = 256 * 1024
NPY, PNG = "application/x-npy", "image/png"
BOUNDARY = "b0undary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def _npy(arr, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _png(shape=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((1, 8, 8, 1), np.uint8))
    return buf.getvalue()


def _part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


GOOD_NPY = _npy(np.full((8, 8), 7, np.uint8))
# (case, Content-Type, body, status, fragment of the error)
BAD = [
    ("unknown-type", "text/plain", b"hello", 415, "unsupported Content-Type 'text/plain'"),
    ("too-large", NPY, b"\0" * (LIMIT + 1), 413, f"limit of {LIMIT} bytes"),
    ("corrupt-png", PNG, b"\x89PNG\r\n\x1a\n-not-really", 400, "not a readable PNG/JPEG image"),
    ("truncated-jpeg", "image/jpeg", _png()[:10], 400, "not a readable PNG/JPEG image"),
    ("empty-image", PNG, b"", 400, "empty"),
    ("huge-image", PNG, _png((4200, 4200)), 413, "4200×4200 pixels exceeds the limit"),
    ("npy-int64", NPY, _npy(np.zeros((8, 8), np.int64)), 400, "unsupported array dtype int64"),
    ("npy-bool", NPY, _npy(np.zeros((8, 8), bool)), 400, "unsupported array dtype bool"),
    ("npy-shape", NPY, _npy(np.zeros((5, 5), np.uint8)), 400, "wrong array shape [5, 5]"),
    ("npy-5d", NPY, _npy(np.zeros((1, 1, 8, 8, 1), np.uint8)), 400, "wrong array shape"),
    ("npy-empty", NPY, _npy(np.zeros((0, 8, 8), np.uint8)), 400, "no images"),
    ("npy-nan", NPY, _npy(np.full((8, 8), np.nan, np.float32)), 400, "NaN"),
    ("npy-range", NPY, _npy(np.full((8, 8), 300.0)), 400, "0–255"),
    ("npy-negative", NPY, _npy(np.full((8, 8), -1.0)), 400, "0–255"),
    ("npy-float-rgb", NPY, _npy(np.zeros((8, 8, 3), np.float32)), 400, "3-channel float32"),
    ("npy-pickle", NPY, _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), 400, "not a valid .npy"),
    ("npy-garbage", NPY, b"\x93NUMPY\x01\x00garbage", 400, "not a valid .npy"),
    ("npz", NPY, _npz(), 400, ".npz archive"),
    ("form-no-boundary", "multipart/form-data", _part("f", _png(), "a.png"), 400, "no valid boundary"),
    ("form-truncated", FORM, _part("f", _png(), "a.png"), 400, "closing boundary"),
    ("form-text-field", FORM, _part("note", b"hi") + f"--{BOUNDARY}--".encode(), 400, "'note' is not a file"),
    ("form-corrupt-file", FORM, _part("f", b"junk", "bad.png") + f"--{BOUNDARY}--".encode(), 400, "'bad.png'"),
    ("form-no-files", FORM, f"--{BOUNDARY}--\r\n".encode(), 400, "no files"),
    ("json-bools", "application/json", b'{"instances": [[true, false]]}', 400, "only numbers"),
    ("json-broken", "application/json", b'{"instances": [1, 2', 400, "not valid JSON"),
]


@pytest.fixture(scope="module")
def source(grey_models):
    return LocalSource(grey_models)


@pytest.fixture
def client(source):
    source.version = "1"
    with make_client(source, max_body_bytes=LIMIT, batch_max_wait_ms=5) as client:
        yield client


@pytest.mark.parametrize("case, content_type, body, status, fragment", BAD, ids=[c[0] for c in BAD])
def test_each_bad_body_gets_its_4xx(client, case, content_type, body, status, fragment):
    resp = client.post("/predict", content=body, headers={"content-type": content_type})
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"], resp.json()
    assert client.post("/predict", content=GOOD_NPY, headers={"content-type": NPY}).status_code == 200


def test_get_predict_is_refused(client):
    assert client.get("/predict").status_code == 405


def test_bad_requests_never_disturb_concurrent_good_ones(client, grey_models):
    rng = np.random.default_rng(3)
    goods = [rng.integers(0, 256, (1 + i % 3, 8, 8, 1), dtype=np.uint8) for i in range(24)]
    expected = [softmax(TFLiteModel(grey_models["1"]).predict(x.astype(np.float32))) for x in goods]
    failures: list[str] = []

    def good(i: int) -> None:
        resp = client.post("/predict", content=_npy(goods[i]), headers={"content-type": NPY})
        if resp.status_code != 200 or not np.allclose(resp.json()["probabilities"], expected[i], atol=2e-6):
            failures.append(f"good {i}: {resp.status_code} {resp.text[:200]}")

    def bad(i: int) -> None:
        _, content_type, body, status, _ = BAD[i % len(BAD)]
        resp = client.post("/predict", content=body, headers={"content-type": content_type})
        if resp.status_code != status:
            failures.append(f"bad {BAD[i % len(BAD)][0]}: {resp.status_code}")

    threads = [threading.Thread(target=good, args=(i,)) for i in range(len(goods))]
    threads += [threading.Thread(target=bad, args=(i,)) for i in range(len(BAD))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures


def _samples(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_expose_the_counters_and_they_move(client, source):
    before = _samples(client)
    assert before[("mlops_serve_model_version", (("model_name", "unit"), ("version", "1")))] == 1.0
    ok_npy = ("mlops_serve_requests_total", (("input", "npy"), ("route", "/predict"), ("status", "200")))
    ok_png = ("mlops_serve_requests_total", (("input", "image"), ("route", "/predict"), ("status", "200")))
    bad_png = ("mlops_serve_requests_total", (("input", "image"), ("route", "/predict"), ("status", "400")))
    unsupported = ("mlops_serve_requests_total", (("input", "unknown"), ("route", "/predict"), ("status", "415")))
    images = ("mlops_serve_images_total", ())
    batches = ("mlops_serve_batch_images_count", ())
    latency = ("mlops_serve_request_seconds_count", (("route", "/predict"),))

    for _ in range(3):
        client.post("/predict", content=_npy(np.zeros((2, 8, 8), np.uint8)), headers={"content-type": NPY})
    client.post("/predict", content=_png(), headers={"content-type": PNG})
    client.post("/predict", content=b"junk", headers={"content-type": PNG})
    client.post("/predict", content=b"junk", headers={"content-type": "text/csv"})
    after = _samples(client)
    assert after[ok_npy] - before.get(ok_npy, 0) == 3
    assert after[ok_png] - before.get(ok_png, 0) == 1
    assert after[bad_png] - before.get(bad_png, 0) == 1
    assert after[unsupported] - before.get(unsupported, 0) == 1
    assert after[images] - before.get(images, 0) == 7
    assert after[latency] - before.get(latency, 0) == 6
    assert 1 <= after[batches] - before.get(batches, 0) <= 4
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")

    source.version = "2"  # a new version: POST /reload swaps it in
    assert client.post("/reload").json() == {"reloaded": True, "version": "2", "previous_version": "1"}
    source.version = "missing"  # a broken one: the reload fails, v2 serves on
    assert client.post("/reload").status_code == 503
    swapped = _samples(client)
    assert swapped[("mlops_serve_model_version", (("model_name", "unit"), ("version", "2")))] == 1.0
    assert swapped[("mlops_serve_model_version", (("model_name", "unit"), ("version", "1")))] == 0.0
    assert swapped[("mlops_serve_reloads_total", (("result", "ok"),))] == 1.0
    assert swapped[("mlops_serve_reloads_total", (("result", "failed"),))] == 1.0
    assert client.post("/predict", content=_png(), headers={"content-type": PNG}).json()["version"] == "2"
