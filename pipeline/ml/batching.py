"""Batches for Keras: a backend-agnostic PyDataset over uint8 arrays (one-hot labels, reshuffled per epoch)."""

from __future__ import annotations

import numpy as np


def make_batches(keras, x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, shuffle: bool, seed: int):
    """A backend-agnostic PyDataset: uint8 images → float32 batches with one-hot labels, reshuffled per epoch."""

    class ArrayBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order = np.arange(len(x))
            self.epoch = 0
            self._reshuffle()

        def _reshuffle(self):
            if shuffle:
                self.order = np.random.default_rng(seed + self.epoch).permutation(len(x))

        def __len__(self):
            return -(-len(x) // batch_size)

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            return x[idx].astype("float32"), np.eye(num_classes, dtype="float32")[y[idx].astype(np.int64)]

        def on_epoch_end(self):
            self.epoch += 1
            self._reshuffle()

    return ArrayBatches()
