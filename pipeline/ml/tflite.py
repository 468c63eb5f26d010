"""Run a .tflite model with ai_edge_litert: raw pixels in, float logits out, int8 quantisation handled."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits as float probabilities (numerically stable)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class TFLiteModel:
    """A loaded .tflite classifier. Input: float pixels (N,H,W,C) in 0–255; output: float32 logits (N,K)."""

    def __init__(self, model: str | Path | bytes, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        self._content, self._num_threads = content, num_threads
        self._interpreter = Interpreter(model_content=content, num_threads=num_threads)
        self._in = self._interpreter.get_input_details()[0]
        self._out = self._interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._in["shape"][1:])
        self.input_dtype = np.dtype(self._in["dtype"])
        self._batch: int | None = None

    def clone(self, num_threads: int | None = None) -> TFLiteModel:
        """Another interpreter of the same model (interpreters are not thread-safe: one per thread).

        Args:
            num_threads: the clone's interpreter threads; None keeps this model's setting.
        """
        return TFLiteModel(self._content, self._num_threads if num_threads is None else num_threads)

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self._interpreter.resize_tensor_input(self._in["index"], [batch, *self.input_shape])
            self._interpreter.allocate_tensors()
            self._in = self._interpreter.get_input_details()[0]
            self._out = self._interpreter.get_output_details()[0]
            self._batch = batch

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self._resize(len(x))
        if self.input_dtype in (np.int8, np.uint8):
            scale, zero = self._in["quantization"]
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.input_dtype)
        else:
            x = x.astype(self.input_dtype)
        self._interpreter.set_tensor(self._in["index"], x)
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._out["index"])
        if np.dtype(self._out["dtype"]) in (np.int8, np.uint8):
            scale, zero = self._out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits (N, K) of float pixel images (N, H, W, C), run in batches of `batch_size`."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"expected images of shape {self.input_shape}, got {x.shape[1:]}")
        return (
            np.concatenate([self._invoke(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
            if len(x)
            else np.zeros((0, self._out["shape"][-1]), np.float32)
        )

    def latency_ms(self, sample: np.ndarray, runs: int) -> float:
        """Median wall time of a batch-1 prediction, in milliseconds."""
        from pipeline.ml.timing import median_latency_ms

        one = np.asarray(sample[:1], dtype=np.float32)
        return median_latency_ms(lambda: self._invoke(one), runs)
