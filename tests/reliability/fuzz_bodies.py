"""Hypothesis strategies for /predict requests (tests/reliability/test_fuzz_server.py), for a model of SHAPE (8, 8, 1).

Each strategy yields a `Request`. Its `images` is the number of predictions the server must answer with (200) when
the request is certainly valid, and None when any 2xx or 4xx will do (a fuzzed body may happen to be valid).
Object arrays hold a `Tripwire`: unpickling one appends to `UNPICKLED`, which the tests assert stays empty.
Multipart forms, transport oddities and the HTTP mix are in tests/reliability/fuzz_forms.py.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from PIL import Image

SHAPE = (8, 8, 1)
UNPICKLED: list[str] = []


def _tripped() -> int:
    UNPICKLED.append("a Tripwire was unpickled")
    return 0


class Tripwire:
    """Unpickling it calls `_tripped` (a server that loads pickles would run it)."""

    def __reduce__(self):
        return _tripped, ()


@dataclass(repr=False)
class Request:
    body: bytes
    content_type: bytes | None
    images: int | None = None  # set: certainly valid, must get 200 with this many predictions
    method: str = "POST"
    chunks: int = 1
    content_length: bytes | None = None
    disconnect: bool = False
    refused: bool = False  # certainly invalid: must get a 4xx

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example: long bodies shortened
        body = repr(self.body[:300]) + (f"... ({len(self.body)} bytes)" if len(self.body) > 300 else "")
        fields = {k: v for k, v in vars(self).items() if k != "body"}
        return f"Request(body={body}, " + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def seeds() -> st.SearchStrategy[np.random.Generator]:
    return st.integers(0, 2**32 - 1).map(np.random.default_rng)


@st.composite
def mutated(draw, data: bytes) -> tuple[bytes, bool]:
    """(`data` truncated, bit-flipped, extended or cut at the front — or untouched, True)."""
    op = draw(st.sampled_from(["none", "none", "truncate", "flip", "append", "behead"]))
    if op == "none" or not data:
        return data, True
    at = draw(st.integers(0, len(data) - 1))
    if op == "truncate":
        return data[:at], False
    if op == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :], False
    if op == "append":
        return data + draw(st.binary(min_size=1, max_size=64)), False
    return data[at + 1 :], False


# ------------------------------------------------------------------------------------------------ JSON

LITERALS = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309", "1" + "0" * 400, "-1", "256", "255.5", "-0.0",
            "1e-400", "0x10", "+1", ".5", "1.", "01", "true", "false", "null", '"7"', "{}", "[]", "[7]", '""']
WRAPPERS = [('{"instances": %s}', True), ('{ "instances" :\n %s }\n', True), ('{"instances": %s, "x": 1}', True),
            ('{"instance": %s}', False), ("[%s]", False), ("%s", False), ('{"instances": %s', False),
            ('{"instances": {"a": %s}}', False), ('{"instances": "%s"}', False)]
JSON_TYPES = [b"application/json", None, b"application/json; charset=utf-8"]
ODD_JSON_TYPES = [b"", b"Application/JSON", b"application/json;charset=UTF-16", b"application/json; charset=\xff",
                  b"text/json", b"application/jsonx", b"application/json; boundary=x"]
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
json_values = st.recursive(
    _scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=25)


def nest(tokens: list[str], dims: tuple[int, ...]) -> str:
    """`tokens` (row-major) as a JSON nested array of `dims`."""
    if not dims:
        return tokens[0]
    step = len(tokens) // dims[0] if dims[0] else 0
    return "[" + ",".join(nest(tokens[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])) + "]"


HARMLESS = {"-0.0", "1e-400"}  # read as 0: every other literal makes the body invalid


@st.composite
def pixel_json(draw) -> tuple[str, int | None, bool]:
    """A nested array near the valid layouts, some numbers replaced by odd literals; (text, images if valid,
    certainly invalid)."""
    n = draw(st.integers(1, 3))
    valid_dims = [(n, *SHAPE), (n, math.prod(SHAPE)), (n, *SHAPE[:2])]
    dims = draw(st.sampled_from(valid_dims) | st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple))
    rng, size = draw(seeds()), math.prod(dims)
    if draw(st.booleans()):
        tokens = [repr(float(v)) for v in rng.uniform(0, 255, size)]
    else:
        tokens = [str(v) for v in rng.integers(0, 256, size)]
    patches = draw(st.lists(st.tuples(st.integers(0, max(size - 1, 0)), st.sampled_from(LITERALS)), max_size=3))
    final = dict(patches) if size else {}  # a later patch of the same number wins
    for at, literal in final.items():
        tokens[at] = literal
    bad = any(literal not in HARMLESS for literal in final.values())
    return nest(tokens, dims), (n if dims in valid_dims and not patches else None), bad


@st.composite
def deep_json(draw) -> str:
    """Arrays nested up to 100,000 deep (balanced or not) around a scalar."""
    depth = draw(st.integers(1, 3000) | st.sampled_from([63, 64, 65, 1023, 1024, 1025, 100_000]))
    close = depth - draw(st.sampled_from([0, 0, 1]))
    return "[" * depth + draw(st.sampled_from(["", "1", "0.5", '"x"', "{}", "null"])) + "]" * close


@st.composite
def json_requests(draw) -> Request:
    kind = draw(st.sampled_from(["pixels", "pixels", "deep", "structure", "bytes"]))
    images, refused = None, False
    if kind == "pixels":
        inner, images, refused = draw(pixel_json())
        wrapper, keeps = draw(st.sampled_from(WRAPPERS))
        text, images, refused = wrapper % inner, images if keeps else None, refused or not keeps
    elif kind == "deep":
        text = '{"instances": ' + draw(deep_json()) + "}"
    elif kind == "structure":
        value = draw(json_values)
        text = json.dumps(draw(st.sampled_from([{"instances": value}, value])), allow_nan=True)
    else:
        return Request(draw(st.binary(max_size=300)), draw(st.sampled_from(JSON_TYPES + ODD_JSON_TYPES)))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1"]))
    content_type = draw(st.sampled_from(JSON_TYPES + JSON_TYPES + ODD_JSON_TYPES))
    valid = encoding == "utf-8" and content_type in JSON_TYPES
    return Request(text.encode(encoding, "replace"), content_type, images if valid else None, refused=refused)


# ------------------------------------------------------------------------------------------------ .npy

NPY = b"application/x-npy"
DTYPES = ["u1", "u1", "<f4", "<f8", "<f2", ">f8", "i1", "<i2", "<i8", "<u2", "?", "<c8", "<U3", "|S2", "<M8[s]",
          "<m8[s]", "[('a', '<i4')]", "O"]
SHAPES = [(8, 8), (8, 8, 1), (8, 8, 3), (1, 8, 8, 1), (2, 8, 8), (3, 8, 8, 3), (8, 8, 2), (0, 8, 8), (1, 8, 8, 0), ()]
VALID_NPY = {(8, 8): 1, (8, 8, 1): 1, (1, 8, 8, 1): 1, (2, 8, 8): 2}  # + (8, 8, 3) and (3, 8, 8, 3) for uint8
DESCRS = ["'|u1'", "'<f4'", "'<f8'", "'<i8'", "'|O'", "'<U4'", "'|V8'", "'|b1'", "'foo'", "('<u1', (8,))", "5",
          "[('a', '<f4')]", "'>f8'", "'<c8'"]


def npy_of(arr: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version, allow_pickle=True)
    return buf.getvalue()


@st.composite
def saved_npy(draw) -> tuple[bytes, int | None, bool]:
    """np.save of an array of any dtype and shape (object arrays of Tripwires); (bytes, images if valid, certainly
    invalid: a dtype other than uint8/float, or an out-of-range value)."""
    descr, shape, rng = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(SHAPES)), draw(seeds())
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(0, 9), max_size=5)))
    dtype = np.dtype(eval(descr) if descr.startswith("[") else descr)  # a constant of DTYPES
    if dtype.hasobject:
        arr = np.empty(shape, dtype)
        arr[...] = Tripwire()
    else:
        try:
            arr = rng.integers(0, 256, shape).astype(dtype)
        except (TypeError, ValueError):
            arr = np.zeros(shape, dtype)
    special = draw(st.sampled_from([None, None, math.nan, math.inf, -1.0, 256.0, 1e39]))
    if dtype.kind != "f":
        special = None
    elif special is not None and arr.size:
        with np.errstate(over="ignore"):  # 1e39 in float16/32: inf, which is the point
            arr.flat[0] = special
    if draw(st.booleans()):
        arr = np.asfortranarray(arr)
    version = draw(st.sampled_from([None, (1, 0), (2, 0), (3, 0)]))
    images = VALID_NPY.get(shape) if dtype.kind == "f" and special is None else None
    if dtype == np.uint8:
        images = {**VALID_NPY, (8, 8, 3): 1, (3, 8, 8, 3): 3}.get(shape)
    refused = not (dtype == np.uint8 or dtype.kind == "f") or (special is not None and arr.size > 0)
    images = None if refused else images
    return npy_of(arr, version), images, refused


def npy_with_header(header: str, version: tuple[int, int] = (1, 0), data: bytes = b"", skew: int = 0) -> bytes:
    """A .npy file with this header text (padded as np.save pads it), its length field off by `skew`, then `data`."""
    text = header.encode("utf-8", "surrogatepass")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    size = max(len(text) + skew, 0)
    length = size.to_bytes(2 if version[0] == 1 else 4, "little") if size < 2**16 else b"\xff\xff"
    return b"\x93NUMPY" + bytes(version) + length + text + data


@st.composite
def crafted_npy(draw) -> bytes:
    """A .npy header written by hand: any descr, shape (huge, negative), version, length field; then some bytes."""
    descr = draw(st.sampled_from(DESCRS) | st.text(max_size=8).map(repr))
    dims = draw(st.lists(st.integers(-3, 12) | st.integers(0, 2**70), max_size=5))
    header = f"{{'descr': {descr}, 'fortran_order': {draw(st.booleans())}, 'shape': {tuple(dims)}, }}"
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (0, 9), (255, 255)]))
    skew = draw(st.sampled_from([0, 0, -1, 1, 1000]))
    return npy_with_header(draw(st.just(header) | st.text(max_size=60)), version, b"\0" * draw(st.integers(0, 600)),
                           skew)


@st.composite
def npy_requests(draw) -> Request:
    if draw(st.booleans()):
        data, images, refused = draw(saved_npy())
        data, untouched = draw(mutated(data))
        images = images if untouched else None
    else:
        data, images, refused, untouched = draw(crafted_npy()), None, False, False
    content_type = draw(st.sampled_from([NPY, NPY, b"application/X-NPY; q=1", b"application/octet-stream"]))
    octets = content_type == b"application/octet-stream"
    return Request(data, content_type, None if octets else images, refused=octets or (refused and untouched))


# ------------------------------------------------------------------------------------------------ images

COMBOS = [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"), ("LA", "PNG"), ("I;16", "PNG"),
          ("I", "TIFF"), ("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("RGB", "GIF"), ("RGB", "BMP"),
          ("RGB", "TIFF"), ("F", "TIFF"), ("RGB", "WEBP")]
IMAGE_TYPES = [b"image/png", b"image/jpeg", b"image/jpg", b"IMAGE/PNG; charset=utf-8"]


def png_of(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """`png` with its IHDR claiming width × height (CRC recomputed, so only the size is wrong)."""
    ihdr = png[12:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + png[24:29]
    return png[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]


@st.composite
def encoded_image(draw) -> tuple[bytes, bool]:
    """A tiny real image of an odd size/mode/format; (bytes, whether it is a PNG/JPEG the server must accept)."""
    mode, fmt = draw(st.sampled_from(COMBOS))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    image = Image.fromarray(draw(seeds()).integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **({"transparency": 0} if mode == "P" else {}))
    return buf.getvalue(), fmt in ("PNG", "JPEG")


@st.composite
def image_requests(draw) -> Request:
    content_type = draw(st.sampled_from(IMAGE_TYPES))
    kind = draw(st.sampled_from(["image", "image", "image", "huge", "random"]))
    if kind == "random":
        prefix = draw(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]))
        return Request(prefix + draw(st.binary(max_size=300)), content_type)
    data, ok = draw(encoded_image())
    if kind == "huge":
        size = st.integers(0, 2**31 - 1) | st.sampled_from([4096, 4097, 65535])
        return Request(with_png_size(png_of(np.zeros((2, 2), np.uint8)), draw(size), draw(size)), content_type)
    data, untouched = draw(mutated(data))
    return Request(data, content_type, 1 if ok and untouched else None, refused=not ok and untouched)
