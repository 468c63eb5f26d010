"""Model tier: a tiny, learnable dataset through preprocess → train → compress → evaluate → register, in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.stages import compress

from pipeline.stages import evaluate

from pipeline.core import io

from pipeline.stages import preprocess

from pipeline.stages import register

from pipeline.stages import train
from pipeline.core.config import (CompressConfig, EvaluateConfig, Params, PreprocessConfig, RegisterConfig,
                             TrainConfig)
from tests.helpers import write_ingested

CLASSES = ["left", "middle", "right"]


def _patterns(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16×16 images: a bright bar whose column depends on the class, on noise. Easy but not trivial."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3, dtype=np.uint8), n_per_class)
    x = rng.integers(0, 60, size=(len(y), 16, 16, 1)).astype(np.uint8)
    for i, label in enumerate(y):
        col = 2 + 5 * int(label) + rng.integers(-1, 2)
        x[i, :, col:col + 3] = 220
    order = rng.permutation(len(y))
    return x[order], y[order]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Run the model stages once on tiny data; tests inspect what they wrote."""
    root = tmp_path_factory.mktemp("model_stages")
    write_ingested(root / "ingested", {"train": _patterns(60, 1), "val": _patterns(15, 2), "test": _patterns(20, 3),
                                       "stream": _patterns(5, 4)}, CLASSES)
    preprocess.run(PreprocessConfig(channels=1), root / "ingested", root / "prepared")
    train_cfg = TrainConfig(model="fast_net", width=8, epochs=4, batch_size=32, learning_rate=0.01)
    train_metrics = train.run(train_cfg, 0, root / "prepared", root / "model.keras", root / "train.json",
                              root / "plots", root / "backup")
    compress_cfg = CompressConfig(target_sparsity=0.5, fine_tune_epochs=1, pruning_frequency=2,
                                  representative_samples=20)
    compress_metrics = compress.run(compress_cfg, 0, root / "prepared", root / "model.keras", root / "compressed",
                                    root / "compress.json")
    return root, train_metrics, compress_metrics


def test_train_writes_model_metrics_and_curves(stages):
    root, metrics, _ = stages
    assert (root / "model.keras").is_file()
    assert (root / "plots" / "training_curves.png").stat().st_size > 1000
    history = (root / "plots" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and len(history) == 5
    assert metrics["val_accuracy"] > 0.6, metrics
    assert metrics["images_per_second"] > 0
    assert not (root / "backup").exists(), "backup state must be removed after a completed run"


def test_compress_prunes_and_quantizes(stages):
    root, _, metrics = stages
    assert metrics["pruning"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.02)
    sizes = {v: info["bytes"] for v, info in metrics["variants"].items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    for variant in compress.VARIANTS:
        assert io.sha256_file(root / "compressed" / f"{variant}.tflite") == metrics["variants"][variant]["sha256"]


def test_tflite_int8_agrees_with_keras(stages):
    import keras

    from pipeline.ml.tflite import TFLiteModel

    root, _, _ = stages
    x, _ = io.read_split(root / "prepared", "test")
    keras_pred = keras.models.load_model(root / "compressed" / "pruned.keras").predict(x.astype("float32"), verbose=0)
    for variant in ("fp32", "int8"):
        model = TFLiteModel(root / "compressed" / f"{variant}.tflite")
        pred = model.predict(x)
        agreement = np.mean(pred.argmax(1) == keras_pred.argmax(1))
        assert agreement >= (0.999 if variant == "fp32" else 0.9), (variant, agreement)
    with pytest.raises(ValueError, match="expected images of shape"):
        TFLiteModel(root / "compressed" / "int8.tflite").predict(np.zeros((1, 8, 8, 1)))


def test_evaluate_then_register_blesses_a_challenger(stages, mlflow_store, tmp_path):
    import mlflow

    root, _, _ = stages
    cfg = EvaluateConfig(min_accuracy=0.5, max_drop_vs_fp32=0.1, per_class_floor=0.2, latency_runs=5)
    reg = RegisterConfig(model_name="tiny", experiment="tiny")
    report = evaluate.run(cfg, reg, root / "prepared", root / "model.keras", root / "compressed",
                          tmp_path / "metrics/evaluate.json", tmp_path / "reports/evaluation.json",
                          tmp_path / "plots/evaluate")
    assert report["decision"]["blessed"] is True, report["decision"]
    assert (tmp_path / "plots/evaluate/confusion_matrix.png").is_file()
    assert set(report["variants"]) == {"keras", "keras_pruned", "fp32", "fp16", "dynamic", "int8"}
    assert np.asarray(report["confusion_matrix"]).sum() == 60

    # register reads the stage outputs from the working directory, as under `dvc repro`
    for src, dst in [(root / "train.json", "metrics/train.json"), (root / "compress.json", "metrics/compress.json")]:
        Path(dst).write_text(Path(src).read_text())
    io.write_json("reports/validation.json", {"success": True, "statistics": {"successful_expectations": 13,
                                                                              "evaluated_expectations": 13}})
    params = Params.model_validate({"register": reg.model_dump(), "evaluate": cfg.model_dump(),
                                    "paths": {"prepared": str(root / "prepared"), "model": str(root / "model.keras"),
                                              "compressed": str(root / "compressed")}})
    Path("params.yaml").write_text("{}\n")
    Path("dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    outs: [{path: model.keras, md5: abc}]\n")
    record = register.run(params, Path("params.yaml"), tmp_path / "reports/registration.json")
    assert record["alias"] is None and record["version"] == 1 and record["blessed"] is True

    client = mlflow.MlflowClient()
    assert not client.get_registered_model("tiny").aliases, "register sets no alias (commit-run does, after the push)"
    version = client.get_model_version("tiny", "1")
    assert version.tags["lineage.key"] == record["lineage_key"] and version.tags["model.sha256"] == record["sha256"]
    again = register.run(params, Path("params.yaml"), tmp_path / "reports/registration.json")
    assert again["version"] == 1 and again["reused"], "the same lineage key registers nothing new"
    assert version.tags["eval.blessed"] == "true"
    assert version.tags["data.manifest_checksum"] == io.read_json(root / "prepared" / "manifest.json")["checksum"]
    assert "git.base_commit" in version.tags and "git_commit" not in version.tags  # commit-run adds the run's own
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("tiny", "champion")
    model = mlflow.pyfunc.load_model("models:/tiny/1")
    x, y = io.read_split(root / "prepared", "test")
    probs = model.predict(x.astype(np.float32))
    assert probs.shape == (60, 3)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert np.mean(probs.argmax(1) == y) >= 0.5
