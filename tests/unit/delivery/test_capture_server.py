"""The real app on a real TFLite model: every /predict answer carries its request id, and a sampled answer reaches
the capture folder (flushed at shutdown) with the ids, predictions and images the clients saw."""

from __future__ import annotations

import io

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core.config import CaptureConfig, DeployConfig
from tests.unit.delivery.conftest import LocalSource

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")

NPY = {"content-type": "application/x-npy"}


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _client(source, folder, **capture):
    from fastapi.testclient import TestClient

    from pipeline.delivery.api import create_app

    cfg = CaptureConfig(**{"enabled": True, "sample_rate": 1.0, "flush_seconds": 3600, **capture})
    return TestClient(create_app(source, DeployConfig(), start_reloader=False, capture=(cfg, str(folder))))


def _metric(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_request_ids_and_captured_answers(grey_models, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    folder = tmp_path / "captured"
    with _client(LocalSource(grey_models), folder) as client:
        one = client.post("/predict", content=_npy(images[0]), headers={**NPY, "X-Request-ID": "label-me.1"})
        many = client.post("/predict", content=_npy(images[1:]), headers={**NPY, "X-Request-ID": "bad id!"})
        bad = client.post("/predict", content=b"junk", headers=NPY)
        assert one.headers["x-request-id"] == one.json()["request_id"] == "label-me.1"
        rid = many.headers["x-request-id"]
        assert len(rid) == 32 and many.json()["request_id"] == rid  # an unsafe id is replaced by a uuid4 hex
        assert bad.status_code == 400 and bad.headers["x-request-id"] == bad.json()["request_id"]
        assert not folder.exists()  # nothing written before a flush is due
        metrics_before = client.get("/metrics").text
    files = list(folder.iterdir())  # the app's shutdown flushed the buffer
    assert len(files) == 1 and _metric(metrics_before, "mlops_serve_capture_images_total") == 0
    with np.load(files[0], allow_pickle=False) as npz:
        assert npz["request_id"].tolist() == ["label-me.1", f"{rid}-0", f"{rid}-1"]
        np.testing.assert_array_equal(npz["x"], images[..., None])
        assert npz["pred"].tolist() == one.json()["predictions"] + many.json()["predictions"]
        np.testing.assert_allclose(npz["probs"][1:], many.json()["probabilities"], atol=1e-5)
        assert npz["version"].tolist() == ["1", "1", "1"]


def test_capture_metrics(grey_models, tmp_path):
    image = _npy(np.zeros((8, 8), np.uint8))
    with _client(LocalSource(grey_models), tmp_path / "c", batch_images=2, max_buffer_images=2) as client:
        for _ in range(3):
            assert client.post("/predict", content=image, headers=NPY).status_code == 200
        client.app.state.capture.flush()
        text = client.get("/metrics").text
    written = _metric(text, "mlops_serve_capture_images_total")  # the writer thread may flush before the 3rd
    assert written + _metric(text, "mlops_serve_capture_dropped_total", reason="queue_full") == 3
    assert _metric(text, "mlops_serve_capture_flushes_total") == len(list((tmp_path / "c").iterdir())) >= 1
    assert _metric(text, "mlops_serve_capture_bytes_total") == sum(f.stat().st_size for f in (tmp_path / "c").iterdir())
