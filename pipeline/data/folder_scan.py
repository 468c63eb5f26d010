"""Image-folder listing and bad-file reporting: which files are images, which are OS junk, what is wrong with the rest.

A class folder's files are sorted into three kinds. OS junk (`.DS_Store` and every other dot-file, `Thumbs.db`,
`ehthumbs.db`, `desktop.ini`; `__MACOSX/` and dot-directories) is ignored silently. Files with an image extension
(`EXTENSIONS`) are candidates, decoded later. Anything else is a bad file: a `BadFile` names it (relative to the
folder root) and says what is wrong, in words a user can act on. `bad_files_error` lists every bad file of a run
in one error (up to `LISTED`, then a count), so a folder with 30 broken files is fixed in one pass, not 30.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import DatasetError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
JUNK_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini"})  # compared lower-case; dot-files too
JUNK_DIRS = frozenset({"__macosx"})  # compared lower-case; dot-directories too
LISTED = 50  # bad files named one per line in an error; the rest are counted

# Leading bytes of each supported format: names the format of a file PIL cannot even identify.
_SIGNATURES = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
_FORMATS = "PNG, JPEG, GIF, BMP or WebP"


@dataclass(frozen=True, order=True)
class BadFile:
    """A file of the folder that cannot be used: `path` relative to the folder root (posix), `kind`, `reason`."""

    path: str
    kind: str  # short category: "unsupported type", "empty", "unreadable", "corrupt", "not an image", "too large"
    reason: str  # the full, actionable explanation

    def record(self) -> dict[str, str]:
        """The JSON form written to manifest.json: relative path and reason."""
        return {"path": self.path, "reason": self.reason}


def is_junk(name: str, is_dir: bool) -> bool:
    """True for OS clutter that is never data: dot-files/directories, Thumbs.db, desktop.ini, __MACOSX/."""
    return name.startswith(".") or name.lower() in (JUNK_DIRS if is_dir else JUNK_FILES)


def unsupported(rel: str) -> BadFile:
    """A file whose extension is not an image type this reader decodes."""
    suffix = Path(rel).suffix.lower()
    what = f"unsupported file type {suffix}" if suffix else "unsupported file type (no extension)"
    expected = f"{', '.join(EXTENSIONS[:-1])} or {EXTENSIONS[-1]}"
    return BadFile(rel, "unsupported type", f"{what}; expected {expected}")


def _list_class(folder: os.DirEntry, split: str) -> tuple[list[Path], list[BadFile]]:
    """Sorted candidate image paths of one class folder, and its files of unsupported type (junk skipped)."""
    files: list[Path] = []
    bad: list[BadFile] = []
    for f in sorted(os.scandir(folder.path), key=lambda e: e.name):
        if f.is_dir() or is_junk(f.name, is_dir=False):
            continue
        if f.name.lower().endswith(EXTENSIONS):
            files.append(Path(f.path))
        else:
            bad.append(unsupported(f"{split}/{folder.name}/{f.name}"))
    return files, bad


def list_split(root: Path, split: str) -> tuple[dict[str, list[Path]], list[BadFile]]:
    """{class name: sorted candidate image paths} of `root/split`, plus the files of unsupported type.

    OS junk is skipped everywhere; files directly under the split folder and sub-folders of a class folder are
    ignored (as before). DatasetError if a class folder holds nothing but junk.
    """
    classes: dict[str, list[Path]] = {}
    bad: list[BadFile] = []
    for entry in sorted(os.scandir(root / split), key=lambda e: e.name):
        if not entry.is_dir() or is_junk(entry.name, is_dir=True):
            continue
        files, unusable = _list_class(entry, split)
        if not files and not unusable:
            raise DatasetError(
                f"{entry.path}: class folder has no images; add images ({', '.join(EXTENSIONS)}) or remove the folder"
            )
        classes[entry.name] = files
        bad += unusable
    return classes, bad


def _looks_like_text(data: bytes) -> bool:
    try:
        text = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def sniff(data: bytes) -> str | None:
    """The image format `data` claims by its leading bytes (PNG, JPEG, GIF, BMP, WebP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def decode_failure(rel: str, data: bytes, error: BaseException) -> BadFile:
    """What is wrong with the non-empty file `rel` whose bytes `data` failed to decode with `error`.

    `error` is the decoder's ImageDecodeError (its __cause__ is PIL's exception) or an unexpected exception.
    """
    cause = error.__cause__ or error
    cause_name = type(cause).__name__
    message = str(error) or cause_name
    fmt = sniff(data)
    if cause_name == "DecompressionBombError":
        sizes = re.findall(r"\((\d+) pixels\) exceeds limit of (\d+)", message)
        what = f"{sizes[0][0]} pixels, over PIL's decompression-bomb limit of {sizes[0][1]}" if sizes else message
        return BadFile(rel, "too large", f"image too large: {what}")
    if cause_name == "UnidentifiedImageError":
        if fmt:
            return BadFile(rel, "corrupt", f"cannot read image: corrupt or truncated {fmt} header ({len(data)} bytes)")
        if _looks_like_text(data):
            return BadFile(rel, "not an image", f"cannot read image: the file holds text, not {_FORMATS} data")
        return BadFile(rel, "not an image", f"cannot read image: the content is not {_FORMATS} data")
    return BadFile(rel, "corrupt", f"cannot read image: corrupt or truncated {fmt or 'image'} data ({message})")


def summary(bad: Iterable[BadFile]) -> str:
    """'30 bad files (12 corrupt, 8 unsupported type, …)': the count per kind, most frequent first."""
    counts = Counter(b.kind for b in bad)
    total = sum(counts.values())
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total} bad file{'s' if total != 1 else ''} ({kinds})"


def listing(root: Path | str, bad: list[BadFile], limit: int = LISTED) -> list[str]:
    """One indented 'path: reason' line per bad file (full path under `root`), at most `limit`, then '… and N more'."""
    lines = [f"  {Path(root) / b.path}: {b.reason}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  … and {len(bad) - limit} more")
    return lines


def bad_files_error(root: Path, bad: list[BadFile], limit: int = LISTED) -> DatasetError:
    """The one error naming every bad file (up to `limit`) and the two ways out: fix them, or skip them."""
    it = "it" if len(bad) == 1 else "them"
    fix = (
        f"Nothing was ingested and no source file was changed: replace or remove {it}, or set "
        "`ingest.on_bad_file: skip` in params.yaml to ingest the folder without them "
        "(manifest.json then lists each skipped file and why)."
    )
    return DatasetError("\n".join([f"{root}: {summary(bad)} in the image folder:", *listing(root, bad, limit), fix]))
