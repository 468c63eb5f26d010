"""Native Keras 3 magnitude pruning: per-kernel masks on a polynomial sparsity schedule.

TF-MOT does not support Keras 3, so the masks and the schedule callback are written here.
"""

from __future__ import annotations

import numpy as np


def polynomial_sparsity(step: int, end_step: int, final: float, initial: float = 0.0, power: int = 3) -> float:
    """Sparsity target at `step`: rises from `initial` to `final` by step `end_step`, then holds."""
    progress = min(1.0, max(0.0, step / max(1, end_step)))
    return final + (initial - final) * (1.0 - progress) ** power


def magnitude_mask(kernel: np.ndarray, sparsity: float) -> np.ndarray:
    """0/1 mask that zeroes the `sparsity` fraction of entries with the smallest magnitude."""
    k = round(sparsity * kernel.size)
    if k <= 0:
        return np.ones_like(kernel)
    threshold = np.partition(np.abs(kernel).ravel(), k - 1)[k - 1]
    return (np.abs(kernel) > threshold).astype(kernel.dtype)


def prunable_kernels(model) -> list:
    """Kernels of Conv2D and Dense layers (the weights worth pruning), excluding the classifier head."""
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    return [layer.kernel for layer in layers[:-1] if len(layer.kernel.shape) >= 2]


def sparsity_of(kernels) -> float:
    """Fraction of zero entries over all `kernels`."""
    total = sum(int(np.prod(k.shape)) for k in kernels)
    zeros = sum(int(np.sum(np.asarray(k.numpy() if hasattr(k, "numpy") else k) == 0)) for k in kernels)
    return zeros / max(1, total)


def pruning_callback(keras, kernels: list, final_sparsity: float, end_step: int, frequency: int):
    """Callback that updates masks every `frequency` steps and keeps pruned weights at zero after every batch."""

    class MagnitudePruning(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0
            self.masks = [np.ones(tuple(k.shape), dtype="float32") for k in kernels]

        def _apply(self):
            for kernel, mask in zip(kernels, self.masks, strict=True):
                kernel.assign(np.asarray(kernel.numpy()) * mask)

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % frequency == 0 or self.step == end_step:
                target = polynomial_sparsity(self.step, end_step, final_sparsity)
                self.masks = [magnitude_mask(np.asarray(k.numpy()), target) for k in kernels]
            self._apply()

        def on_train_end(self, logs=None):
            self.masks = [magnitude_mask(np.asarray(k.numpy()), final_sparsity) for k in kernels]
            self._apply()

    return MagnitudePruning()
