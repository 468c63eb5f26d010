"""`mlops predict`: image files in, a CSV of labels out — with a real tiny .tflite in a real (sqlite) MLflow registry.

Expected labels are computed independently: the test's own pixel arrays (written losslessly as PNG) run through
the .tflite directly, so a wrong decode, order or label mapping shows up as a mismatch.
"""

from __future__ import annotations

import csv
import io as stdio
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.delivery import predict as predictor
from pipeline.ml.tflite import TFLiteModel, softmax
from pipeline.registry import store
from tests.helpers_s3 import build_tiny_tflite

NAME = "clf"
LABELS = ["ankle", "bag", "coat"]
SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def tflites(tmp_path_factory):
    """Two real 8×8×1 → 3-class models with different weights (v1, v2)."""
    root = tmp_path_factory.mktemp("tflite")
    return build_tiny_tflite(root / "v1.tflite", seed=1), build_tiny_tflite(root / "v2.tflite", seed=2)


def _register(tflite: Path, labels: list[str], alias: str | None) -> str:
    """A registered version laid out as `mlops register` leaves it (classifier/artifacts/*.tflite + labels.json)."""
    labels_file = tflite.parent / "labels.json"
    labels_file.write_text(json.dumps(labels))
    client = store.client()
    with mlflow.start_run(experiment_id=store.ensure_experiment("exp")) as run:
        mlflow.log_artifact(str(tflite), "classifier/artifacts")
        mlflow.log_artifact(str(labels_file), "classifier/artifacts")
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/classifier", run.info.run_id)
    if alias:
        client.set_registered_model_alias(NAME, alias, version.version)
    return str(version.version)


@pytest.fixture
def params(tmp_path, monkeypatch):
    """params.yaml naming the model, in the current directory (tmp_path)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"register:\n  model_name: {NAME}\n  experiment: exp\n")
    return tmp_path / "params.yaml"


@pytest.fixture
def registry(params, mlflow_store, tflites):
    """v1 = champion, v2 = challenger in a fresh sqlite registry."""
    return {"champion": _register(tflites[0], LABELS, "champion"), "v2": _register(tflites[1], LABELS, "challenger")}


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def _write_good(folder: Path, x: np.ndarray) -> list[Path]:
    """x[i] as PNG (lossless), alternating between folder/ and folder/sub/; the paths in walk order."""
    paths = []
    for i, image in enumerate(x):
        path = folder / ("sub" if i % 2 else "") / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0], "L").save(path)
        paths.append(path)
    return sorted(paths, key=lambda p: (p.parent != folder, p.name))


def _write_bad(folder: Path) -> dict[str, str]:
    """Files ingest rejects, by name → a fragment of the expected error; plus hidden files that must be skipped."""
    png = stdio.BytesIO()
    Image.fromarray(_images(1, seed=9)[0, ..., 0], "L").save(png, "PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])  # cut inside the pixel data
    (folder / "text.png").write_text("not an image at all\n")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 64)
    (folder / ".DS_Store").write_bytes(b"\x00" * 8)
    (folder / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(folder / ".hidden" / "skipped.png")
    return {
        "truncated.png": "cannot read image (image file is truncated)",
        "text.png": "cannot read image (cannot identify image file);",
        "empty.jpg": "cannot read image",
        "Thumbs.db": "not an image file",
    }


def _expected(tflite: Path, x: np.ndarray) -> tuple[list[str], np.ndarray]:
    probs = softmax(TFLiteModel(tflite).predict(x.astype(np.float32)))
    return [LABELS[k] for k in probs.argmax(axis=1)], probs.max(axis=1)


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(stdio.StringIO(text)))


def _invoke(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def test_good_files_classified_bad_files_reported_exit_1(registry, tflites, tmp_path):
    folder = tmp_path / "images"
    x = _images(7)
    good = _write_good(folder, x)
    bad = _write_bad(folder)
    result = _invoke(folder, "--output", tmp_path / "out.csv", "--batch-size", 3)
    assert result.exit_code == 1, result.output
    assert "4 file(s) failed" in result.stderr
    assert f"{NAME} v{registry['champion']}: 7/11 files classified" in result.stderr
    rows = _rows((tmp_path / "out.csv").read_text())
    assert list(rows[0]) == list(predictor.COLUMNS)
    assert len(rows) == 11 and not any(".hidden" in r["path"] or "DS_Store" in r["path"] for r in rows)
    by_path = {r["path"]: r for r in rows}
    labels, probs = _expected(tflites[0], x)
    order = sorted(range(len(x)), key=lambda i: (i % 2, i))  # the walk order of _write_good
    for path, i in zip(good, order, strict=True):
        row = by_path[str(path)]
        assert (row["label"], row["error"]) == (labels[i], "")
        assert float(row["probability"]) == pytest.approx(probs[i], abs=1e-6)
    for name, fragment in bad.items():
        row = by_path[str(folder / name)]
        assert fragment in row["error"] and row["label"] == row["probability"] == ""
        assert str(folder) not in row["error"] and "0x" not in row["error"]


def test_all_good_exit_0_csv_on_stdout_and_batch_size_irrelevant(registry, tflites, tmp_path):
    x = _images(10, seed=3)
    _write_good(tmp_path / "a", x)
    one = _invoke(tmp_path / "a", "-o", "-", "--batch-size", 1)
    assert one.exit_code == 0, one.output
    big = _invoke(tmp_path / "a", "-o", "-", "--batch-size", 256)
    assert _rows(one.stdout) == _rows(big.stdout)
    assert sorted(r["label"] for r in _rows(one.stdout)) == sorted(_expected(tflites[0], x)[0])
    assert not (tmp_path / "predictions.csv").exists()


def test_explicit_files_in_given_order_default_output(registry, tmp_path):
    paths = _write_good(tmp_path / "b", _images(3, seed=4))
    result = _invoke(paths[2], paths[0], paths[2])
    assert result.exit_code == 0, result.output
    rows = _rows((tmp_path / "predictions.csv").read_text())
    assert [r["path"] for r in rows] == [str(paths[2]), str(paths[0])]


def test_version_and_alias_choose_the_model(registry, tflites, tmp_path):
    x = _images(12, seed=5)
    _write_good(tmp_path / "c", x)
    v1, v2 = _expected(tflites[0], x)[0], _expected(tflites[1], x)[0]
    assert v1 != v2  # the two models disagree somewhere
    for args, want in (
        ([], v1),
        (["--alias", "challenger"], v2),
        (["--version", registry["v2"]], v2),
        (["--version", registry["champion"]], v1),
    ):
        result = _invoke(tmp_path / "c", "-o", "-", *args)
        assert result.exit_code == 0, result.output
        by_name = {Path(r["path"]).name: r["label"] for r in _rows(result.stdout)}
        assert [by_name[f"img{i:02d}.png"] for i in range(len(x))] == want


def test_resized_and_converted_like_ingest(registry, tflites, tmp_path):
    rgb = np.random.default_rng(6).integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "big.png")
    result = _invoke(tmp_path / "big.png", "-o", "-")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "big.png") as im:
        grey = np.asarray(im.convert("L").resize((8, 8), Image.Resampling.BILINEAR))
    assert _rows(result.stdout)[0]["label"] == _expected(tflites[0], grey.reshape(1, *SHAPE))[0][0]


def _usage(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "x.png")
    result = _invoke(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "predictions.csv").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing"], "no such file or folder"),
        (["{tmp}/empty"], "no files to classify"),
        (["{tmp}/x.png", "--version", "1", "--alias", "champion"], "not both"),
        (["{tmp}/x.png", "--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_usage_errors_exit_2_before_the_registry_is_read(params, tmp_path, args, message):
    _usage(tmp_path, args, message)
    assert not (tmp_path / "mlflow").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/x.png", "--alias", "nope"], "no clf@nope in the registry"),
        (["{tmp}/x.png", "--version", "99"], "clf v99: not in the registry"),
    ],
)
def test_unknown_model_exit_2(registry, tmp_path, args, message):
    _usage(tmp_path, args, message)


def test_labels_must_match_the_model_outputs(params, mlflow_store, tflites, tmp_path):
    _register(tflites[0], ["only", "two"], "champion")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "x.png")
    result = _invoke(tmp_path / "x.png")
    assert result.exit_code == 2 and "3 outputs but 2 labels" in result.stderr
