"""`mlops predict` on the tiny workspace's champion: the evaluate stage's test split, exported as PNG files, gets
exactly the labels the evaluate stage gave it (image by image, hence the same accuracy); bad files beside them are
reported and do not stop the rest.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core import io
from tests.helpers_project import run

pytestmark = pytest.mark.integration


def _export_test_split(root: Path, folder: Path) -> tuple[np.ndarray, list[str]]:
    """The prepared test split (what evaluate scored) as folder/<index>.png, lossless; its labels and class names."""
    x, y = io.read_split(root / "data/prepared", "test")
    folder.mkdir()
    for i, image in enumerate(x):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{i:05d}.png")
    return y, io.read_json(root / "data/prepared/stats.json")["class_names"]


def test_predict_matches_evaluate_on_the_test_split(tiny_workspace, tmp_path, figure):
    root = tiny_workspace.root
    folder = tmp_path / "test"
    y, names = _export_test_split(root, folder)
    (folder / "broken.png").write_text("not a png\n")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 32)

    result = run(["mlops", "predict", str(folder), "--output", str(tmp_path / "out.csv")], root, check=False)
    assert result.returncode == 1, result.stderr  # some files failed: all rows written, then exit 1
    assert f"v{tiny_workspace.version}: {len(y)}/{len(y) + 2} files classified" in result.stderr
    assert "2 file(s) failed" in result.stderr

    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "out.csv").open())}
    assert "cannot read image" in rows.pop("broken.png")["error"]
    assert "not an image file" in rows.pop("Thumbs.db")["error"]
    assert all(not r["error"] for r in rows.values()) and len(rows) == len(y)
    predicted = [rows[f"{i:05d}.png"]["label"] for i in range(len(y))]

    with (root / "plots/evaluate/confusion.csv").open() as fh:  # evaluate's deploy-variant label per test image
        evaluated = [r["predicted"] for r in csv.DictReader(fh)]
    assert predicted == evaluated
    metrics = tiny_workspace.metrics("evaluate")
    accuracy = float(np.mean([p == names[k] for p, k in zip(predicted, y, strict=True)]))
    assert round(accuracy, 4) == metrics["accuracy"] == metrics["variants"][metrics["deploy_variant"]]["accuracy"]
    figure(f"mlops predict on {len(y)} test PNGs: accuracy {accuracy:.4f} = evaluate's {metrics['accuracy']} "
           f"({metrics['deploy_variant']}), same label for every image")
