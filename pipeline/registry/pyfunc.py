"""The MLflow pyfunc that serves a .tflite classifier: raw pixels in, class probabilities out."""

from __future__ import annotations

import json

import numpy as np
from mlflow.pyfunc import PythonModel


class TFLiteClassifier(PythonModel):
    """Loads the logged .tflite and labels; predict(N,H,W,C float pixels 0–255) → (N,K) probabilities."""

    def load_context(self, context):
        """Load the logged .tflite and labels.json."""
        from pipeline.ml.tflite import TFLiteModel

        self.model = TFLiteModel(context.artifacts["tflite"])
        with open(context.artifacts["labels"]) as fh:
            self.labels = json.load(fh)

    def predict(self, context, model_input, params=None):
        """Class probabilities (N, K) for images (N, H, W, C) or one image (H, W, C), pixels 0–255."""
        if isinstance(model_input, dict):  # named tensor input: {"image": array}
            model_input = model_input["image"] if "image" in model_input else next(iter(model_input.values()))
        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == len(self.model.input_shape):
            x = x[None]
        from pipeline.ml.tflite import softmax

        return softmax(self.model.predict(x))
