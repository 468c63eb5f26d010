"""Real tiny .tflite models and a local model source for the model server's unit tests (no S3, no registry)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers_s3 import build_tiny_tflite

CLASSES = ["ankle", "bag", "coat"]


class LocalSource:
    """A model source over local .tflite files: `version` names the one `load()` returns (what S3Source does)."""

    def __init__(self, models: dict[str, Path], version: str = "1"):
        self.models, self.version = models, version
        self.description = "local test source"

    def current_version(self) -> str:
        return self.version

    def load(self):
        from pipeline.ml.tflite import TFLiteModel

        data = self.models[self.version].read_bytes()
        model = TFLiteModel(data)
        manifest = {"model_name": "unit", "version": self.version, "sha256": hashlib.sha256(data).hexdigest(),
                    "input_shape": list(model.input_shape), "class_names": CLASSES}
        return model, manifest


@pytest.fixture(scope="session")
def grey_models(tmp_path_factory) -> dict[str, Path]:
    """Two real 8×8×1 → 3-class models with different weights: versions "1" and "2"."""
    root = tmp_path_factory.mktemp("grey")
    return {"1": build_tiny_tflite(root / "v1.tflite", seed=1), "2": build_tiny_tflite(root / "v2.tflite", seed=2)}


@pytest.fixture(scope="session")
def rgb_model(tmp_path_factory) -> Path:
    """A real 6×5×3 → 3-class model (non-square, colour: exercises resizing and channel conversion)."""
    return build_tiny_tflite(tmp_path_factory.mktemp("rgb") / "rgb.tflite", seed=3, shape=(6, 5, 3))


def make_client(source, **deploy):
    """A TestClient (lifespan entered by the caller's `with`) on the real app serving `source`."""
    from fastapi.testclient import TestClient

    from pipeline.core.config import DeployConfig
    from pipeline.delivery.api import create_app

    cfg = DeployConfig(**deploy)
    return TestClient(create_app(source, cfg, start_reloader=False))
