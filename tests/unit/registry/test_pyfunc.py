"""pipeline/registry/pyfunc.py, the model's own code: it stands alone and predicts what pipeline.ml.tflite predicts.

MLflow runs that file at load time ("models from code"), so it may import nothing of this project; the tests save
real pyfunc models from it (tiny real fp32 and int8 .tflite files, no training) and load them back with MLflow.
"""

from __future__ import annotations

import ast
import json
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest

from pipeline.ml.tflite import TFLiteModel, softmax
from pipeline.registry import pyfunc
from pipeline.stages.register import PIP_REQUIREMENTS
from tests.helpers_s3 import ROOT, sample_images

MODEL_FILE = Path(pyfunc.__file__)
SHAPE, CLASSES = (8, 8, 1), ["cat", "dog", "bird"]
ALLOWED = {"__future__", "json", "numpy", "mlflow", "ai_edge_litert"}


def _imported_roots(path: Path) -> set[str]:
    """Top-level package of every import anywhere in `path` (module level and inside functions)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import cannot resolve once MLflow copies the file into a model"
            roots.add((node.module or "").split(".")[0])
    return roots


def test_the_model_file_imports_only_numpy_mlflow_and_litert():
    assert _imported_roots(MODEL_FILE) <= ALLOWED


def test_the_pinned_requirements_are_pyprojects():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in PIP_REQUIREMENTS:
        assert requirement in declared, f"{requirement} differs from pyproject.toml's pin"
    assert not any(name in r for r in PIP_REQUIREMENTS for name in ("tensorflow", "keras"))


@pytest.fixture(scope="module")
def tflites(tmp_path_factory) -> dict[str, Path]:
    """A tiny real model (Flatten → Dense 3 on 8x8x1) as fp32 and as full-int8 .tflite (int8 input and output)."""
    import keras

    from pipeline.ml.conversion import convert, export_saved_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(len(CLASSES))])
    out = tmp_path_factory.mktemp("tflite")
    with tempfile.TemporaryDirectory() as saved:
        export_saved_model(model, Path(saved))
        for variant in ("fp32", "int8"):
            (out / f"{variant}.tflite").write_bytes(convert(Path(saved), variant, sample_images(32, SHAPE, seed=1)))
    return {variant: out / f"{variant}.tflite" for variant in ("fp32", "int8")}


def _saved(tflite: Path, tmp_path: Path):
    """The model saved from the model file (models from code) and loaded back by MLflow."""
    import mlflow

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(CLASSES))
    path = tmp_path / "model"
    mlflow.pyfunc.save_model(str(path), python_model=str(MODEL_FILE), pip_requirements=PIP_REQUIREMENTS,
                             artifacts={"tflite": str(tflite), "labels": str(labels)})
    assert (path / MODEL_FILE.name).is_file()  # the code travels with the model
    return mlflow.pyfunc.load_model(str(path))


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_predictions_equal_the_projects_tflite_path(tflites, variant, tmp_path):
    loaded = _saved(tflites[variant], tmp_path)
    images = sample_images(300, SHAPE)  # more than one interpreter batch (256)
    expected = softmax(TFLiteModel(tflites[variant]).predict(images))
    got = loaded.predict(images)
    assert got.shape == (300, len(CLASSES)) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_accepts_one_image_and_a_named_tensor(tflites, tmp_path):
    loaded = _saved(tflites["int8"], tmp_path)
    images = sample_images(3, SHAPE, seed=2)
    batch = loaded.predict(images)
    np.testing.assert_array_equal(loaded.predict({"image": images}), batch)
    np.testing.assert_array_equal(loaded.predict(images[0]), batch[:1])
    assert loaded.predict(images[:0]).shape == (0, len(CLASSES))


def test_rejects_images_of_another_shape(tflites, tmp_path):
    loaded = _saved(tflites["fp32"], tmp_path)
    with pytest.raises(ValueError, match="expected images of shape"):
        loaded.predict(np.zeros((2, 4, 4, 1), np.float32))
