"""Plots saved as PNG files (matplotlib, headless), atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core import io


def _pyplot():
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train vs validation."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[key], label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with io.atomic_path(path) as tmp:  # a kill mid-save leaves the previous PNG, never a torn one
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix with counts annotated."""
    plt = _pyplot()
    n = len(class_names)
    size = max(5.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    with io.atomic_path(path) as tmp:  # a kill mid-save leaves the previous PNG, never a torn one
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
