"""The champion on monitoring data: its predictions on ingested-format images, and the training reference profile
(pipeline/monitoring/drift.py) that incoming batches are compared with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core import io
from pipeline.core.errors import StageError
from pipeline.data.images import convert_channels
from pipeline.monitoring import drift


def model_input(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Ingested uint8 NHWC images in the model's channel layout (as `mlops preprocess` does), as float32 0-255."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.shape[-1] != input_shape[-1]:
        x = convert_channels(x, int(input_shape[-1]))
    return x.astype(np.float32)


def predict_classes(model, x: np.ndarray) -> np.ndarray:
    """Predicted class ids of `model` (a TFLiteModel) on ingested-format images."""
    logits = model.predict(model_input(x, model.input_shape))
    return np.argmax(logits, axis=1).astype(np.int64)


def predict_probs(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) float32 of `model` (softmax of its logits) on ingested-format images."""
    from pipeline.ml.tflite import softmax

    logits = model.predict(model_input(x, model.input_shape))
    return softmax(np.asarray(logits, np.float64)).astype(np.float32)


def confidence_reference(
    data_dir: str | Path, model, sample: int = 5000, seed: int = 0, splits: tuple[str, ...] = ("test", "val")
) -> dict | None:
    """{"split", "max_prob": [...]}: the model's max class probability on a seeded sample of the first non-empty
    split of `splits` (held out: the confidence served traffic should show); None when none has images.
    """
    rng = np.random.default_rng([seed, 1])
    for split in splits:
        try:
            x, _ = io.read_split(Path(data_dir), split)
        except FileNotFoundError:
            continue
        if len(x):
            idx = np.sort(rng.choice(len(x), size=min(sample, len(x)), replace=False))
            max_prob = predict_probs(model, x[idx]).max(axis=1)
            return {"split": split, "max_prob": [round(float(v), 4) for v in max_prob]}
    return None


def _sample_accuracy(data_dir: Path, split: str, model, sample: int, rng: np.random.Generator) -> float | None:
    """The model's accuracy on a seeded sample of `split`; None when that split is empty or missing."""
    try:
        xa, ya = io.read_split(data_dir, split)
    except FileNotFoundError:
        return None
    if not len(xa):
        return None
    ia = np.sort(rng.choice(len(xa), size=min(sample, len(xa)), replace=False))
    return float(np.mean(predict_classes(model, xa[ia]) == ya[ia].astype(np.int64)))


def build_profile(
    data_dir: str | Path, champion_model, sample: int = 5000, seed: int = 0, accuracy_split: str = "val"
) -> dict:
    """Reference profile from a seeded sample of the train split, with the champion's predictions on it.

    The profile's fallback accuracy is measured on a sample of `accuracy_split` (held out, so not optimistic like the
    train split would be); None when that split is empty or missing.
    """
    data_dir = Path(data_dir)
    manifest = io.read_json(data_dir / "manifest.json")
    num_classes = len(manifest["class_names"])
    x, _ = io.read_split(data_dir, "train")
    if len(x) == 0:
        raise StageError(f"{data_dir}: the train split is empty; cannot build a monitoring reference")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x), size=min(sample, len(x)), replace=False))
    x_ref = x[idx]
    del x
    accuracy = _sample_accuracy(data_dir, accuracy_split, champion_model, sample, rng)
    profile = drift.reference_profile(
        x_ref, predict_classes(champion_model, x_ref), num_classes, sample=len(x_ref), seed=seed, accuracy=accuracy
    )
    profile.update(
        {
            "source": str(data_dir),
            "split": "train",
            "accuracy_split": accuracy_split if accuracy else None,
            "class_names": list(manifest["class_names"]),
            "manifest_checksum": manifest.get("checksum"),
            "confidence": confidence_reference(data_dir, champion_model, sample, seed),
        }
    )
    return profile
