"""A .npy body read without trusting its header: checked before a byte of array memory is set aside, never unpickled.

`np.load` allocates the array its header declares before it reads the data, so a 100-byte body declaring a
(2**40,) int64 array asks for 8 TiB (MemoryError), and a declared size past the platform's index range overflows.
Here the header is read with numpy's own header parser (`numpy.lib.format`), then checked: a supported format
version, a pixel dtype (uint8 or float; object arrays, i.e. pickles, are refused before anything is decoded),
non-negative dimensions, and at least as many data bytes as the shape and dtype need. The array is then a
zero-copy view of the body (`np.frombuffer`): it can never be larger than what was sent.

Every problem raises `NpyError` (a ValueError) whose message says what is wrong.
"""

from __future__ import annotations

import io
import math
import re
import tokenize

import numpy as np
from numpy.lib import format as npy_format

MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # an .npz archive (np.savez) starts as a zip file
VERSIONS = ((1, 0), (2, 0), (3, 0))
# the header np.save writes for a C-order uint8/float array, read directly (numpy's parser costs more than a small
# image's inference); anything else goes through numpy.lib.format's parser
_COMMON_HEADER = re.compile(rb"\{'descr': '([<|]u1|<f[248])', 'fortran_order': False, 'shape': \(([\d, ]*)\), \}\s*")


class NpyError(ValueError):
    """The bytes are not a .npy array of pixels that can be read safely; the message says why."""


def pixel_dtype(dtype: np.dtype) -> bool:
    """True for the dtypes a /predict array may have: uint8 or any float."""
    return dtype == np.uint8 or dtype.kind == "f"


def _common_header(body: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int] | None:
    """(dtype, shape, fortran order, data offset) of the usual version-1.0 header; None for anything else."""
    if not body.startswith(MAGIC + b"\x01\x00") or len(body) < 10:
        return None
    end = 10 + int.from_bytes(body[8:10], "little")
    match = _COMMON_HEADER.fullmatch(body, 10, end)
    if match is None:
        return None
    shape = tuple(int(d) for d in match.group(2).replace(b" ", b"").split(b",") if d)
    return np.dtype(match.group(1).decode()), shape, False, end


def _any_header(body: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran order, data offset) through numpy's header parser; NpyError when it is not .npy."""
    if body.startswith(ZIP_MAGIC):
        raise NpyError("it is an .npz archive (or another zip file); send one .npy array")
    stream = io.BytesIO(body)
    try:
        version = npy_format.read_magic(stream)
        if version not in VERSIONS:
            raise NpyError(f"unsupported .npy format version {version[0]}.{version[1]}")
        # a 3.0 header is a 2.0 header in UTF-8; the dtypes accepted here are all ASCII, where the two agree
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
    except NpyError:
        raise
    except (ValueError, TypeError, SyntaxError, EOFError, tokenize.TokenError) as exc:  # numpy's messages say what
        raise NpyError(str(exc) or type(exc).__name__) from None
    return dtype, tuple(shape), bool(fortran), stream.tell()


def read_npy(body: bytes) -> np.ndarray:
    """The pixel array of a .npy body (a read-only view of `body`); NpyError for anything unsafe or malformed."""
    header = _common_header(body) or _any_header(body)
    dtype, shape, fortran, offset = header
    if dtype.hasobject:
        raise NpyError(f"object arrays (pickled Python objects, dtype {dtype}) are refused; send uint8 or float pixels")
    if not pixel_dtype(dtype):
        raise NpyError(f"unsupported array dtype {dtype}; send uint8 or float pixels in 0–255")
    if any(d < 0 for d in shape):
        raise NpyError(f"the header declares negative dimensions {list(shape)}")
    need, have = math.prod(shape) * dtype.itemsize, len(body) - offset
    if have < need:
        raise NpyError(f"truncated: the header declares {list(shape)} {dtype} ({need} bytes) but {have} bytes follow")
    try:  # numpy still refuses shapes past its index range, e.g. (0, 2**40, 2**40)
        flat = np.frombuffer(body, dtype, math.prod(shape), offset)
        return flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    except ValueError as exc:
        raise NpyError(f"shape {list(shape)}: {exc}") from None
