"""Request bodies of POST /predict → validated float32 (N, H, W, C) batches of 0–255 pixels for the served model.

One parser per body kind, chosen by Content-Type:

* `application/json` (or no Content-Type): {"instances": [H×W×C pixel arrays, or flat lists]};
* `image/png`, `image/jpeg`: one encoded image;
* `multipart/form-data`: one or more image (or .npy) files, in order;
* `application/x-npy`: one .npy array (H,W), (H,W,C), (N,H,W) or (N,H,W,C), uint8 or float 0–255.

Images are decoded exactly as ingest decodes an image folder (`pipeline.data.image_folder.decode_image`: L or RGB,
bilinear resize) to the model's (H, W, C), then through preprocess's `convert_channels`; uint8 arrays with the
other channel count are converted by `convert_channels` too. Only bytes with the PNG or JPEG signature reach the
image decoder; .npy bodies are read by `pipeline.delivery.npyfile` (header checked before any memory is set aside,
object arrays never unpickled). Anything malformed raises `RequestError` (4xx) whose message names the problem.
"""

from __future__ import annotations

import json
import math

import numpy as np
import orjson

from pipeline.data.image_folder import ImageDecodeError, ImageTooLargeError, decode_image
from pipeline.data.images import convert_channels
from pipeline.delivery.fastjson import numeric_instances
from pipeline.delivery.multipart import MultipartError, split_multipart
from pipeline.delivery.npyfile import MAGIC as NPY_MAGIC, NpyError, read_npy

JSON, IMAGE, NPY, MULTIPART = "json", "image", "npy", "multipart"
KINDS = {
    "application/json": JSON,
    "": JSON,  # no Content-Type: JSON, as before binary bodies existed
    "image/png": IMAGE,
    "image/jpeg": IMAGE,
    "image/jpg": IMAGE,
    "application/x-npy": NPY,
    "multipart/form-data": MULTIPART,
}
ACCEPTED = "application/json, image/png, image/jpeg, multipart/form-data, application/x-npy"
MAX_IMAGE_PIXELS = 4096 * 4096  # a decoded image larger than this is refused (413) before it is decoded
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG: the only formats handed to the decoder


class RequestError(Exception):
    """A client error: the HTTP status and the message returned as {"error": message}."""

    def __init__(self, status: int, message: str):
        """Keep the status and the message; `kind` (the body kind, once known) labels the request's metrics."""
        super().__init__(message)
        self.status, self.message, self.kind = status, message, "unknown"


def input_kind(content_type: str | None) -> str:
    """The body kind for a Content-Type header (parameters ignored); RequestError 415 for any other type."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind = KINDS.get(media)
    if kind is None:
        raise RequestError(415, f"unsupported Content-Type {media!r}; send one of: {ACCEPTED}")
    return kind


def check_pixels(x: np.ndarray, what: str) -> np.ndarray:
    """`x` as float32 after checking every value is finite and within 0–255 (RequestError 400 otherwise)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise RequestError(400, f"{what} contain NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 255):  # checked before the cast, where 1e39 would become inf
        raise RequestError(400, f"pixel values must lie in 0–255, got {float(x.min()):g}…{float(x.max()):g}")
    return x.astype(np.float32, copy=False)


def parse_json(body: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """{"instances": [...]} → float32 (N, *shape), or RequestError (`fastjson` first, the general parser else)."""
    fast = numeric_instances(body, shape)
    if fast is not None:
        return check_pixels(fast, "instances")
    if not body.strip():
        raise RequestError(400, 'the body is empty; send a JSON object like {"instances": [...]}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # the standard parser reads NaN/Infinity literals, so they get their own message below
            payload = json.loads(body)
        except RecursionError:  # orjson stops at 1024 levels, the standard parser at the interpreter's limit
            raise RequestError(400, "the JSON body nests too deeply; an image is at most 3 levels of lists") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not valid JSON: {exc}") from None
    return parse_instances(payload, shape)


def _depth(value: object) -> int:
    """How many lists deep the first elements nest ([[[1]]] → 3): checked before numpy walks the whole."""
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    return depth


def _has_bool(value: list) -> bool:
    """True when a JSON true/false hides among numbers (numpy would read it as 1/0)."""
    stack = [value]
    while stack:
        for item in stack.pop():
            if isinstance(item, list):
                stack.append(item)
            elif isinstance(item, bool):
                return True
    return False


def parse_instances(payload, shape: tuple[int, ...]) -> np.ndarray:
    """Validate a decoded JSON body into a float32 (N, *shape) batch of 0–255 pixels, or raise RequestError."""
    if not isinstance(payload, dict):
        raise RequestError(400, 'the body must be a JSON object like {"instances": [...]}')
    if "instances" not in payload:
        raise RequestError(422, 'missing field "instances": a list of images')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, '"instances" must be a non-empty list of images')
    expected = f"{list(shape)} (or a flat list of {math.prod(shape)} numbers)"
    if (depth := _depth(instances)) > len(shape) + 1:
        raise RequestError(400, f"instances nest {depth} lists deep; each instance must be {expected}")
    try:
        raw = np.asarray(instances)
    except ValueError:
        raise RequestError(400, f"instances have inconsistent shapes; each must be {expected}") from None
    if raw.dtype == object or raw.dtype.kind not in "iuf" or _has_bool(instances):
        raise RequestError(400, "instances must hold only numbers (pixel values 0–255), not text, null or true/false")
    x = check_pixels(raw, "instances")
    if x.shape[1:] == shape:
        return x
    if x.ndim == 2 and x.shape[1] == math.prod(shape):
        return x.reshape(len(x), *shape)
    if len(shape) == 3 and shape[-1] == 1 and x.shape[1:] == shape[:-1]:
        return x[..., None]
    raise RequestError(400, f"wrong instance shape {list(x.shape[1:])}; expected {expected}")


def _as_nhwc(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An (H,W), (H,W,C), (N,H,W) or (N,H,W,C) array as (N,H,W,C); RequestError 400 for any other shape."""
    h, w = shape[0], shape[1]
    sent = list(arr.shape)
    if arr.ndim == 2:
        arr = arr[None, ..., None]
    elif arr.ndim == 3 and arr.shape[:2] == (h, w) and arr.shape[2] in (1, 3):
        arr = arr[None]  # one (H, W, C) image
    elif arr.ndim == 3:
        arr = arr[..., None]  # (N, H, W) grey images
    if arr.ndim != 4 or arr.shape[1:3] != (h, w):
        raise RequestError(
            400,
            f"wrong array shape {sent}; expected images of {h}×{w}: (H,W), (H,W,C), (N,H,W) or (N,H,W,C)",
        )
    if len(arr) == 0:
        raise RequestError(400, "the array holds no images")
    return arr


def parse_npy(body: bytes, shape: tuple[int, ...], what: str = "the body") -> np.ndarray:
    """A .npy array → float32 (N, *shape), or RequestError (uint8 arrays get their channels converted)."""
    try:
        arr = read_npy(body)
    except NpyError as exc:
        raise RequestError(400, f"{what} is not a valid .npy array: {exc}") from None
    x = _as_nhwc(arr, shape)
    if x.shape[-1] != shape[-1]:
        if x.dtype != np.uint8 or x.shape[-1] not in (1, 3):
            raise RequestError(
                400,
                f"{x.shape[-1]}-channel {x.dtype} images; the model takes {shape[-1]} channels "
                f"(send uint8 1- or 3-channel images to have them converted)",
            )
        x = convert_channels(x, shape[-1])
    return check_pixels(x, "the array's pixels")


def parse_image(data: bytes, shape: tuple[int, ...], what: str = "the body") -> np.ndarray:
    """One PNG/JPEG → float32 (1, *shape), decoded as ingest decodes an image folder; RequestError otherwise.

    Only bytes that start with the PNG or JPEG signature reach the decoder (PIL would try any format it knows).
    """
    if not data.startswith(SIGNATURES):
        raise RequestError(400, f"{what} is not a readable PNG/JPEG image: it starts with neither signature")
    try:
        image = decode_image(data, (shape[0], shape[1]), shape[2], max_pixels=MAX_IMAGE_PIXELS)
    except ImageTooLargeError as exc:
        raise RequestError(413, f"{what}: {exc}") from None
    except ImageDecodeError as exc:
        raise RequestError(400, f"{what} is not a readable PNG/JPEG image: {exc}") from None
    return convert_channels(image[None], shape[2]).astype(np.float32)


def parse_form(content_type: str, body: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """multipart/form-data with one or more image (or .npy) files → float32 (N, *shape), in part order."""
    try:
        parts = split_multipart(content_type, body)
    except MultipartError as exc:
        raise RequestError(400, f"malformed multipart/form-data body: {exc}") from None
    batches = []
    for part in parts:
        what = f"file {part.filename!r} (field {part.name!r})"
        if part.filename is None:
            raise RequestError(400, f"multipart field {part.name!r} is not a file; send each image as a file field")
        if part.content_type == "application/x-npy" or part.data.startswith(NPY_MAGIC):
            batches.append(parse_npy(part.data, shape, what))
        else:
            batches.append(parse_image(part.data, shape, what))
    if not batches:
        raise RequestError(400, "the multipart body holds no files; send one or more image files")
    return batches[0] if len(batches) == 1 else np.concatenate(batches)


def parse_body(kind: str, content_type: str | None, body: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 (N, *shape) batch of a /predict body of `kind` (see `input_kind`), or RequestError."""
    if kind == JSON:
        return parse_json(body, shape)
    if not body:
        raise RequestError(400, "the body is empty")
    if kind == NPY:
        return parse_npy(body, shape)
    if kind == IMAGE:
        return parse_image(body, shape)
    return parse_form(content_type or "", body, shape)
