"""A fast path for the usual JSON /predict body: exactly {"instances": <a regular nested array of numbers>}.

Decoding nested pixel lists creates one Python object per number and per innermost list, which costs more than the
model itself on small images. Here the body's bytes are split instead: its bracket/comma skeleton (numbers and
whitespace removed) must equal the skeleton of one accepted layout — (N, H, W, C), (N, H·W·C), or (N, H, W) for one
channel — and the numbers, brackets removed, are read by orjson as one flat list (which validates every number
token). Anything else returns None and the general parser decides, with its own error messages.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import numpy as np
import orjson

_HEAD = re.compile(rb'\s*\{\s*"instances"\s*:\s*')
_NUMBER = b"0123456789.eE+-"
_SPACE = b" \t\r\n"


def _skeleton(dims: tuple[int, ...]) -> bytes:
    """The brackets and commas of a regular nested array of `dims` (numbers removed)."""
    if not dims:
        return b""
    return b"[" + b",".join([_skeleton(dims[1:])] * dims[0]) + b"]"


@lru_cache(maxsize=64)
def layouts(shape: tuple[int, ...], n: int) -> frozenset[bytes]:
    """Skeletons of the accepted layouts of `n` images of `shape` (H, W, C)."""
    accepted = [(n, *shape), (n, math.prod(shape))]
    if len(shape) == 3 and shape[-1] == 1:
        accepted.append((n, *shape[:-1]))
    return frozenset(_skeleton(dims) for dims in accepted)


def numeric_instances(body: bytes, shape: tuple[int, ...]) -> np.ndarray | None:
    """float32 (N, *shape) of a body {"instances": [...numbers only, an accepted layout...]}; else None."""
    head = _HEAD.match(body)
    end = body.rfind(b"}")
    if head is None or end < head.end() or body[end + 1 :].strip(_SPACE):
        return None
    inner = body[head.end() : end].strip(_SPACE)
    skeleton = inner.translate(None, _NUMBER + _SPACE)
    if not inner.startswith(b"[") or skeleton.translate(None, b"[],"):
        return None  # something besides numbers, brackets and commas
    try:
        flat = orjson.loads(b"[" + inner.translate(None, b"[]") + b"]")
    except orjson.JSONDecodeError:
        return None
    size = math.prod(shape)
    if not flat or len(flat) % size or skeleton not in layouts(shape, len(flat) // size):
        return None
    return np.array(flat, dtype=np.float32).reshape(len(flat) // size, *shape)
