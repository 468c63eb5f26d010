"""A small, strict multipart/form-data splitter (RFC 7578) for the model server's file uploads.

Bodies are already size-limited and in memory, so the parts are plain slices: the body is split on
CRLF "--boundary", each part's headers are read with the standard library's email parser, and the content is the
bytes up to the next delimiter. Anything off (no boundary, no closing delimiter, a part without headers or a
Content-Disposition) raises MultipartError with what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser

_HEADERS = BytesHeaderParser(policy=policy.HTTP)


class MultipartError(ValueError):
    """The body does not follow multipart/form-data framing."""


@dataclass(frozen=True)
class Part:
    """One form field: its name, the file name (None for a plain field), its Content-Type and bytes."""

    name: str | None
    filename: str | None
    content_type: str
    data: bytes


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type header; MultipartError if missing or invalid."""
    header = _HEADERS.parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace"))
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise MultipartError("the Content-Type header has no valid boundary parameter")
    return boundary.encode("latin-1", "replace")


def _part(raw: bytes, index: int) -> Part:
    """One part (the bytes between two delimiters, after the delimiter's line break)."""
    head, sep, data = raw.partition(b"\r\n\r\n")
    if not sep:
        if raw.startswith(b"\r\n"):  # no headers at all: the blank line comes first
            head, data = b"", raw[2:]
        else:
            raise MultipartError(f"part {index} has no blank line between its headers and its content")
    headers = _HEADERS.parsebytes(head + b"\r\n\r\n")
    if headers.get("content-disposition") is None:
        raise MultipartError(f"part {index} has no Content-Disposition header")
    name = headers.get_param("name", header="content-disposition")
    filename = headers.get_filename()
    return Part(
        name=name if isinstance(name, str) else None,
        filename=filename,
        content_type=headers.get_content_type() if headers.get("content-type") else "application/octet-stream",
        data=data,
    )


def split_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/form-data body, in order; MultipartError when the framing is broken."""
    delimiter = b"\r\n--" + boundary_of(content_type)
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        raise MultipartError("the boundary of the Content-Type header never occurs in the body")
    parts: list[Part] = []
    for index, chunk in enumerate(chunks[1:], start=1):
        if chunk.startswith(b"--"):  # the closing delimiter; what follows is the epilogue
            return parts
        line_end = chunk.find(b"\r\n")
        if line_end < 0 or chunk[:line_end].strip(b" \t"):
            raise MultipartError(f"delimiter {index} is not followed by a line break")
        parts.append(_part(chunk[line_end + 2 :], index))
    raise MultipartError("the closing boundary delimiter is missing (truncated body?)")
