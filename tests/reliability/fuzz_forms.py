"""Hypothesis strategies for /predict multipart forms, transport oddities and the HTTP mix (see fuzz_bodies.py).

Same conventions: each strategy yields a `Request`; `images` set means certainly valid (200 with that many
predictions), `refused` certainly invalid (a 4xx), neither: any 2xx or 4xx will do.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import strategies as st

from tests.reliability.fuzz_bodies import (
    JSON_TYPES,
    NPY,
    Request,
    encoded_image,
    image_requests,
    json_requests,
    npy_of,
    npy_requests,
    png_of,
    saved_npy,
)

# ------------------------------------------------------------------------------------------------ multipart

BCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+"
FORM_TYPES = [b'multipart/form-data; boundary="%s"', b"multipart/form-data; boundary=%s", b"multipart/form-data",
              b"multipart/form-data; boundary=", b"multipart/mixed; boundary=%s"]


def form_of(files: list[bytes], images: int, boundary: str = "fuzz-boundary") -> Request:
    """A well-formed multipart/form-data body of `files` (PNG, or .npy by their magic)."""
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="{i}.png"\r\n\r\n'.encode()
                    + data + b"\r\n" for i, data in enumerate(files))
    return Request(body + f"--{boundary}--\r\n".encode(), f'multipart/form-data; boundary="{boundary}"'.encode(),
                   images)


@st.composite
def form_part(draw) -> tuple[bytes, bytes, int | None]:
    """(headers, content, images if this part is a valid file)."""
    content, images = draw(st.sampled_from(["png", "npy", "junk", "empty"])), None
    if content == "png":
        data, ok = draw(encoded_image())
        images = 1 if ok else None
    elif content == "npy":
        data, images, _ = draw(saved_npy())
    else:
        data = draw(st.binary(max_size=80)) if content == "junk" else b""
    disposition = draw(st.sampled_from([b'form-data; name="f"; filename="a.png"'] * 3 + [
        b'form-data; name="note"', b"form-data; name=f; filename*=UTF-8''%e2%82%ac.png", b"attachment",
        b"form-data; filename*=bogus''%ff", b'form-data; name="f"; filename="\xff\xfe\\"\x00"']))
    lines = [b"Content-Disposition: " + disposition] if draw(st.integers(0, 5)) else []
    lines += draw(st.lists(st.sampled_from([b"Content-Type: image/png", b"Content-Type: application/x-npy",
                                            b"content-type: ;;;", b"X: \x80\xff", b"junk-without-colon"]), max_size=2))
    valid = lines == [b'Content-Disposition: form-data; name="f"; filename="a.png"']
    return b"\r\n".join(lines), data, images if valid else None


@st.composite
def multipart_requests(draw) -> Request:
    good = draw(st.text(BCHARS, min_size=1, max_size=70))
    boundary = draw(st.just(good) | st.sampled_from(["", "x" * 71, "a b ", 'q"q', "\u00fc", "--"]))
    parts = draw(st.lists(form_part(), max_size=3))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    b = boundary.encode("utf-8")
    body = b"".join(b"--" + b + eol + head + eol + eol + data + eol for head, data, _ in parts)
    body += b"--" + b + b"--" + eol
    framing = draw(st.sampled_from(["ok", "ok", "ok", "unclosed", "other", "preamble", "epilogue", "cut"]))
    if framing == "unclosed":
        body = body[: body.rfind(b"--" + b + b"--")]
    elif framing == "other":
        body = body.replace(b"--" + b, b"--" + b + b"x")
    elif framing == "preamble":
        body = draw(st.binary(max_size=20)) + b"\r\n" + body
    elif framing == "epilogue":
        body += draw(st.binary(max_size=20))
    elif framing == "cut":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    header = draw(st.sampled_from(FORM_TYPES))
    content_type = header.replace(b"%s", b) if b"%s" in header else header
    images = [p[2] for p in parts]
    valid = (parts and None not in images and boundary == good and eol == b"\r\n" and framing in ("ok", "epilogue")
             and header.startswith(b'multipart/form-data; boundary="'))
    return Request(body, content_type, sum(images) if valid else None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ transport

ODD_TYPES = [b"text/plain", b"application/xml", b"multipart/form-data", b"image/gif", b"application/x-npy ",
             b" application/json", b"application/json;", b";", b"\xff\xfe", b"*/*"]
ODD_LENGTHS = [b"-1", b"abc", b"1e3", b" 12 ", b"9" * 30, b"0", b"\xff", b"0x10", b"1_0"]


def valid_requests() -> list[Request]:
    """One valid request of each body kind (JSON, .npy, PNG, multipart), one 8×8 grey image each."""
    x = np.arange(64, dtype=np.uint8).reshape(8, 8)
    return [Request(json.dumps({"instances": [x.tolist()]}).encode(), b"application/json", 1),
            Request(npy_of(x), NPY, 1), Request(png_of(x), b"image/png", 1), form_of([png_of(x), npy_of(x)], 2)]


@st.composite
def sized_requests(draw, limit: int) -> Request:
    """Bodies of one repeated byte, from empty to past the size limit, with any Content-Type."""
    size = draw(st.integers(limit - 16, limit + 16) | st.integers(0, 16) | st.sampled_from([65536, 65537, 3 * limit]))
    body = draw(st.sampled_from([b"\0", b"[", b"1", b" ", b"\x93"])) * size
    return Request(body, draw(st.sampled_from([NPY, b"image/png", b"multipart/form-data; boundary=b", *JSON_TYPES])))


@st.composite
def transport_requests(draw, limit: int) -> Request:
    """Valid or sized bodies sent with odd methods, Content-Types, Content-Lengths, chunkings and disconnects."""
    req = draw(st.sampled_from(valid_requests()) | sized_requests(limit))
    content_type = draw(st.just(req.content_type) | st.sampled_from(ODD_TYPES) | st.binary(max_size=40))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "post"]))
    length = draw(st.sampled_from(["none", "none", "right", "odd"]))
    declared = {"none": None, "right": str(len(req.body)).encode()}.get(length)
    content_length = declared or draw(st.sampled_from(ODD_LENGTHS))
    disconnect = draw(st.integers(0, 3)) == 0
    valid = content_type == req.content_type and method == "POST" and length != "odd" and not disconnect
    refused = method != "POST" or len(req.body) > limit
    return Request(req.body, content_type, req.images if valid else None, method, draw(st.integers(1, 6)),
                   content_length if length != "none" else None, disconnect, refused)


def _printable(req: Request) -> bool:
    """A Content-Type an HTTP client sends: printable ASCII, no surrounding blanks (h11 refuses the others)."""
    ct = req.content_type
    return ct is None or (all(32 <= c < 127 for c in ct) and ct == ct.strip())


def http_requests(limit: int) -> st.SearchStrategy[Request]:
    """Every body kind, as an HTTP client can send it (printable Content-Type, POST, one Content-Length)."""
    bodies = json_requests() | npy_requests() | image_requests() | multipart_requests() | sized_requests(limit)
    return bodies.filter(_printable)
