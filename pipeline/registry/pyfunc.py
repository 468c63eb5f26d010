"""The MLflow pyfunc that serves a .tflite classifier: raw pixels in, class probabilities out.

Logged as MLflow "models from code" (`mlflow.pyfunc.log_model(python_model=<this file>)`): MLflow copies this
file into the model and runs it at load time, so it must stand alone. It imports only numpy, mlflow and
ai_edge_litert — nothing of this project — and a registered model loads and serves in a virtualenv that has just
the model's requirements.txt (tests/integration/test_portable_model.py). The TFLite invoke below repeats
pipeline.ml.tflite.TFLiteModel's (int8/uint8 quantisation included) so that both give the same probabilities.
Reads: the model's artifacts `tflite` (the .tflite) and `labels` (labels.json, the class names).
"""

from __future__ import annotations

import json

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

BATCH = 256  # images per interpreter call (as TFLiteModel.predict)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits as float probabilities (numerically stable)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float pixels as the input tensor's dtype: int8/uint8 through its (scale, zero point), else a cast."""
    dtype = np.dtype(detail["dtype"])
    if dtype not in (np.int8, np.uint8):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    """The output tensor as float32 logits: int8/uint8 through its (scale, zero point)."""
    if np.dtype(detail["dtype"]) in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def _images(model_input) -> np.ndarray:
    """Float32 pixels from an array, or from a {"image": array} dict (the signature's named tensor)."""
    if isinstance(model_input, dict):
        model_input = model_input["image"] if "image" in model_input else next(iter(model_input.values()))
    return np.asarray(model_input, dtype=np.float32)


class TFLiteClassifier(PythonModel):
    """Loads the logged .tflite and labels; predict(N,H,W,C float pixels 0–255) → (N,K) probabilities."""

    def load_context(self, context):
        """Load the logged .tflite (artifact `tflite`) into an ai_edge_litert interpreter and labels.json."""
        from ai_edge_litert.interpreter import Interpreter

        with open(context.artifacts["tflite"], "rb") as fh:
            self.interpreter = Interpreter(model_content=fh.read())
        with open(context.artifacts["labels"]) as fh:
            self.labels = json.load(fh)
        self.input_shape = tuple(int(d) for d in self.interpreter.get_input_details()[0]["shape"][1:])
        self._batch: int | None = None

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        """Float32 logits (n, K) of one batch of float pixels (n, H, W, C)."""
        interpreter = self.interpreter
        if len(x) != self._batch:
            detail = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(detail["index"], [len(x), *self.input_shape])
            interpreter.allocate_tensors()
            self._batch = len(x)
        detail_in, detail_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.set_tensor(detail_in["index"], _quantize(x, detail_in))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(detail_out["index"]), detail_out)

    def predict(self, context, model_input: np.ndarray, params=None):
        """Class probabilities (N, K) for images (N, H, W, C) or one image (H, W, C), pixels 0–255."""
        x = _images(model_input)
        if x.ndim == len(self.input_shape):
            x = x[None]
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"expected images of shape {self.input_shape}, got {x.shape[1:]}")
        if not len(x):
            return np.zeros((0, len(self.labels)), np.float32)
        return softmax(np.concatenate([self._invoke(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]))


set_model(TFLiteClassifier())  # what MLflow loads when it runs this file
