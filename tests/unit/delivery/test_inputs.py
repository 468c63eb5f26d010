"""Binary /predict bodies decode exactly as the pipeline does: PNG, JPEG and multipart files give the same arrays as
ingest's image-folder reader on the same files (then preprocess's channel conversion), .npy arrays the same as
preprocess's `convert_channels`; and through the real app, the same probabilities as the model on those arrays."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.image_folder import read_image_folder
from pipeline.data.images import convert_channels
from pipeline.delivery.inputs import parse_body, parse_form, parse_image, parse_npy
from pipeline.ml.tflite import TFLiteModel, softmax
from tests.unit.delivery.conftest import LocalSource, make_client

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _files() -> dict[str, bytes]:
    """Image files of every kind the ingest reader handles, none of them at the model's size."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (13, 11, 3), dtype=np.uint8), "RGB")
    grey = Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8), "L")
    rgba = Image.fromarray(rng.integers(0, 256, (10, 10, 4), dtype=np.uint8), "RGBA")
    deep = Image.fromarray(rng.integers(0, 65536, (12, 12), dtype=np.uint16))  # 16-bit grey
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    return {
        "a_rgb.png": _encode(rgb, "PNG"),
        "b_grey.png": _encode(grey, "PNG"),
        "c_rgba.png": _encode(rgba, "PNG"),
        "d_16bit.png": _encode(deep, "PNG"),
        "e_palette.png": _encode(palette, "PNG", transparency=0),
        "f_photo.jpg": _encode(rgb, "JPEG", quality=85),
        "g_grey.jpeg": _encode(grey, "JPEG", quality=90),
    }


def _ingested(tmp_path: Path, files: dict[str, bytes], shape: tuple[int, int, int]) -> np.ndarray:
    """What ingest's image-folder reader makes of `files` (one class folder), as float32 (N, H, W, C)."""
    folder = tmp_path / "source" / "train" / "only"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    raw = read_image_folder(str(tmp_path / "source"), shape[:2], shape[2])
    return convert_channels(raw.train_x, shape[2]).astype(np.float32)  # preprocess's channel step


def _multipart(files: dict[str, bytes]) -> tuple[str, bytes]:
    boundary = "test-boundary-7MA4YWxkTrZu0gW"
    body = b""
    for name, data in files.items():
        kind = "image/jpeg" if name.endswith(("jpg", "jpeg")) else "image/png"
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 f"Content-Type: {kind}\r\n\r\n").encode() + data + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 5, 3)])
def test_png_jpeg_and_multipart_decode_like_the_ingest_reader(tmp_path, shape):
    files = _files()
    expected = _ingested(tmp_path, files, shape)
    for i, data in enumerate(files.values()):
        np.testing.assert_array_equal(parse_image(data, shape), expected[i : i + 1])
    content_type, body = _multipart(files)
    np.testing.assert_array_equal(parse_form(content_type, body, shape), expected)
    np.testing.assert_array_equal(parse_body("multipart", content_type, body, shape), expected)


@pytest.mark.parametrize("layout", ["HW", "HWC", "NHW", "NHWC"])
def test_npy_layouts_and_channel_conversion_match_preprocess(layout):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    arr = {"HW": grey[0, ..., 0], "HWC": grey[0], "NHW": grey[..., 0], "NHWC": grey}[layout]
    n = 3 if layout.startswith("N") else 1
    buf = io.BytesIO()
    np.save(buf, arr)
    np.testing.assert_array_equal(parse_npy(buf.getvalue(), (8, 8, 1)), grey[:n].astype(np.float32))
    # the other channel count: converted exactly as the preprocess stage converts
    as_rgb = convert_channels(grey[:n], 3).astype(np.float32)
    np.testing.assert_array_equal(parse_npy(buf.getvalue(), (8, 8, 3)), as_rgb)
    rgb = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, rgb)
    np.testing.assert_array_equal(parse_npy(buf.getvalue(), (8, 8, 1)), convert_channels(rgb, 1).astype(np.float32))
    floats = io.BytesIO()
    np.save(floats, arr.astype(np.float64) * 0.5)
    np.testing.assert_array_equal(parse_npy(floats.getvalue(), (8, 8, 1)), grey[:n].astype(np.float32) * 0.5)


def test_every_body_kind_answers_with_the_models_probabilities(tmp_path, rgb_model):
    shape = (6, 5, 3)
    files = _files()
    expected = softmax(TFLiteModel(rgb_model).predict(_ingested(tmp_path, files, shape)))
    with make_client(LocalSource({"1": rgb_model})) as client:
        for i, (name, data) in enumerate(files.items()):
            kind = "image/jpeg" if name.endswith(("jpg", "jpeg")) else "image/png"
            resp = client.post("/predict", content=data, headers={"content-type": kind})
            assert resp.status_code == 200, resp.text
            np.testing.assert_allclose(resp.json()["probabilities"], expected[i : i + 1], atol=2e-6)
        content_type, body = _multipart(files)
        resp = client.post("/predict", content=body, headers={"content-type": content_type})
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["probabilities"], expected, atol=2e-6)
        # httpx's own multipart encoder (what a Python client sends)
        resp = client.post("/predict", files=[("images", (n, d)) for n, d in files.items()])
        assert resp.status_code == 200 and resp.json()["predictions"] == expected.argmax(axis=1).tolist()
        x = _ingested(tmp_path / "again", files, shape).astype(np.uint8)
        buf = io.BytesIO()
        np.save(buf, x)
        resp = client.post("/predict", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["probabilities"], expected, atol=2e-6)
        resp = client.post("/predict", json={"instances": x.tolist()})
        np.testing.assert_allclose(resp.json()["probabilities"], expected, atol=2e-6)


@pytest.mark.parametrize("layout", ["NHWC", "NHW", "flat", "compact", "pretty", "floats"])
def test_the_json_fast_path_reads_what_the_general_parser_reads(layout):
    import json

    from pipeline.delivery.fastjson import numeric_instances
    from pipeline.delivery.inputs import parse_instances

    x = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 1))
    value = {"NHW": x[..., 0], "flat": x.reshape(3, -1), "floats": x / 2}.get(layout, x).tolist()
    body = json.dumps({"instances": value}, indent=2 if layout == "pretty" else None,
                      separators=(",", ":") if layout == "compact" else None).encode()
    fast = numeric_instances(body, (8, 8, 1))
    assert fast is not None
    np.testing.assert_array_equal(fast, parse_instances(json.loads(body), (8, 8, 1)))


@pytest.mark.parametrize("body", [
    b'{"instances": [[1, 2], [3]]}', b'{"instances": [[1 2]]}', b'{"instances": [true]}', b'{"instances": [NaN]}',
    b'{"instances": [1], "x": 2}', b'{"instances": []}', b'{"instances": [' + b"1," * 63 + b"1,]}",
    b'["instances", ' + b"1," * 63 + b"1]",
])
def test_the_json_fast_path_leaves_anything_else_to_the_general_parser(body):
    from pipeline.delivery.fastjson import numeric_instances

    assert numeric_instances(body, (8, 8, 1)) is None
