"""Image-folder reader: PNG/JPEG/GIF/BMP/WebP files of mixed sizes and modes in train/<class>/ and test/<class>/;
every bad file reported in one run (fail) or left out and listed (skip); OS junk ignored; sources never touched."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import IngestConfig
from pipeline.core.errors import DatasetError
from pipeline.data.image_folder import read_image_folder


def save(path: Path, mode: str, size: tuple[int, int], value: int = 128, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        im = Image.new("RGB", size, (value, value, value)).convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "RGBA":
        im = Image.new("RGBA", size, (value, value, value, 100))
    else:
        im = Image.new(mode, size, value if mode == "L" else (value, value, value))
    im.save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    save(root / "train" / "cat" / "a.png", "L", (10, 12), 50)
    save(root / "train" / "cat" / "b.jpg", "RGB", (40, 30), 60)
    save(root / "train" / "cat" / "c.PNG", "RGBA", (16, 16), 70)
    save(root / "train" / "ant" / "d.png", "P", (20, 20), 80)
    save(root / "train" / "ant" / "e.jpeg", "L", (16, 16), 90)
    save(root / "train" / "bee" / "f.png", "RGB", (8, 8), 100)
    save(root / "test" / "ant" / "g.png", "RGB", (16, 16), 110)
    save(root / "test" / "bee" / "h.png", "L", (16, 16), 120)
    save(root / "test" / "cat" / "i.jpg", "RGB", (16, 16), 130)
    (root / "train" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_classes_and_labels(folder: Path, channels: int) -> None:
    raw = read_image_folder(str(folder), (12, 16), channels)
    assert raw.class_names == ["ant", "bee", "cat"]
    assert raw.train_x.shape == (6, 12, 16, channels) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (3, 12, 16, channels)
    assert raw.train_y.tolist() == [0, 0, 1, 2, 2, 2] and raw.test_y.tolist() == [0, 1, 2]
    assert set(raw.sources) == {"train/", "test/"}


def test_pixel_values_survive_mode_conversion_and_resize(folder: Path) -> None:
    raw = read_image_folder(str(folder), (12, 16), 1)
    means = raw.train_x.reshape(6, -1).mean(axis=1)
    # Uniform images stay uniform through conversion + bilinear resize (JPEG allows a little error).
    np.testing.assert_allclose(means, [80, 90, 100, 50, 60, 70], atol=2)


def test_rgb_channels_order(tmp_path: Path) -> None:
    im = Image.new("RGB", (4, 4), (200, 100, 50))
    (tmp_path / "train" / "x").mkdir(parents=True)
    im.save(tmp_path / "train" / "x" / "a.png")
    raw = read_image_folder(str(tmp_path), (4, 4), 3)
    assert raw.train_x[0, 0, 0].tolist() == [200, 100, 50] and raw.test_x is None


def test_sixteen_bit_grey_is_scaled(tmp_path: Path) -> None:
    (tmp_path / "train" / "x").mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "train" / "x" / "a.png")
    assert read_image_folder(str(tmp_path), (4, 4), 1).train_x.max() == 255


def test_non_image_file_is_named(folder: Path) -> None:
    (folder / "train" / "bee" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="notes.txt"):
        read_image_folder(str(folder), (8, 8), 1)


def test_corrupt_image_is_named(folder: Path) -> None:
    (folder / "train" / "bee" / "broken.png").write_bytes(b"\x89PNG not really")
    fix = "(?s)broken.png: cannot read image: corrupt or truncated PNG header.*replace or remove it"
    with pytest.raises(DatasetError, match=fix):
        read_image_folder(str(folder), (8, 8), 1)


def test_empty_class_folder(folder: Path) -> None:
    (folder / "train" / "dog").mkdir()
    with pytest.raises(DatasetError, match="dog.*no images"):
        read_image_folder(str(folder), (8, 8), 1)


def test_missing_train_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train.*not found"):
        read_image_folder(str(tmp_path), (8, 8), 1)


def test_test_classes_must_match(folder: Path) -> None:
    save(folder / "test" / "dog" / "z.png", "L", (8, 8))
    with pytest.raises(DatasetError, match="do not match"):
        read_image_folder(str(folder), (8, 8), 1)


def test_many_files_thread_pool_keeps_order(tmp_path: Path) -> None:
    for i in range(600):  # more than one chunk, so several workers run
        save(tmp_path / "train" / f"c{i % 2}" / f"{i:04d}.png", "L", (6, 6), i % 256)
    raw = read_image_folder(str(tmp_path), (6, 6), 1)
    want = [i % 256 for i in range(0, 600, 2)] + [i % 256 for i in range(1, 600, 2)]
    assert raw.train_x[:, 0, 0, 0].tolist() == want


def test_process_pool_path_matches_and_names_bad_file(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.data.image_folder as mod

    threaded = read_image_folder(str(folder), (12, 16), 3)
    monkeypatch.setattr(mod, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(mod.os, "cpu_count", lambda: 2)
    pooled = read_image_folder(str(folder), (12, 16), 3)
    np.testing.assert_array_equal(pooled.train_x, threaded.train_x)
    assert pooled.sources == threaded.sources
    (folder / "train" / "bee" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "train" / "ant" / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="(?s)2 bad files.*ant/empty.png.*bee/broken.png"):
        read_image_folder(str(folder), (8, 8), 1)
    skipped = read_image_folder(str(folder), (12, 16), 3, on_bad_file="skip")  # a bad file never aborts its chunk
    np.testing.assert_array_equal(skipped.train_x, threaded.train_x)
    assert [b.path for b in skipped.skipped] == ["train/ant/empty.png", "train/bee/broken.png"]
    assert skipped.sources == threaded.sources  # the digest covers the files used, and only those


# --------------------------------------------------------------------------------------------- every bad file at once


def encode(fmt: str, value: int = 90, size: tuple[int, int] = (12, 10), **kw) -> bytes:
    """A small RGB image of one colour, encoded in `fmt`."""
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def animated_gif() -> bytes:
    """Three frames: red 40, 120, 200; readers must take the first."""
    frames = [Image.new("RGB", (10, 10), (v, 0, 0)) for v in (40, 120, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buf.getvalue()


def huge_png() -> bytes:
    """A PNG whose header claims 100000×100000 pixels (PIL refuses it as a decompression bomb before decoding)."""
    data = bytearray(encode("PNG"))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def write_good(root: Path) -> None:
    """Readable images: PNG/JPEG in three train classes and a test split, plus an animated GIF, a BMP and a WebP."""
    for c, name in enumerate(("ant", "bee", "cat")):
        for i in range(3):
            path = root / "train" / name / f"ok{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode("PNG", 30 * c + 10 * i + 5))
        test = root / "test" / name / "ok.jpg"
        test.parent.mkdir(parents=True, exist_ok=True)
        test.write_bytes(encode("JPEG", 40 * c + 20))
    (root / "train" / "ant" / "anim.gif").write_bytes(animated_gif())
    (root / "train" / "bee" / "flat.bmp").write_bytes(encode("BMP", 77))
    (root / "train" / "cat" / "photo.webp").write_bytes(encode("WEBP", 150, lossless=True))


def write_junk(root: Path) -> None:
    """OS clutter that must be ignored silently wherever it is (it is never data, never a bad file)."""
    blobs = {
        "Thumbs.db": b"\xd0\xcf\x11\xe0 thumbnail cache",
        "train/Thumbs.db": b"junk",
        "train/ant/Thumbs.db": b"junk",
        "train/bee/desktop.ini": b"[.ShellClassInfo]",
        "test/cat/Desktop.ini": b"[.ShellClassInfo]",
        "train/cat/.DS_Store": b"\0\0\0\1Bud1",
        "train/cat/._ok0.png": b"\0\5\26\7 AppleDouble",
        "train/.hidden/a.png": b"not even an image",
        "train/ant/.cache/x.txt": b"junk",
        "__MACOSX/train/ant/._ok0.png": b"\0\5\26\7",
        "train/__MACOSX/ant/._ok1.png": b"\0\5\26\7",
        "train/bee/__MACOSX/._flat.bmp": b"\0\5\26\7",
        "test/.hidden": b"junk",
    }
    for rel, data in blobs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def write_bad(root: Path) -> dict[str, str]:
    """30 bad files of every kind; returns {relative path: a fragment its reason must contain}."""
    png, jpg = encode("PNG", size=(64, 64)), encode("JPEG", size=(64, 64))
    text = b"Lorem ipsum: not an image at all\n"
    bad = {  # relative path: (bytes, expected fragment of the reason)
        "train/ant/trunc1.png": (png[: len(png) // 2], "corrupt or truncated PNG"),
        "train/ant/trunc2.png": (png[:60], "corrupt or truncated PNG"),
        "train/bee/trunc3.png": (png[: len(png) - 30], "corrupt or truncated PNG"),
        "train/cat/header.png": (png[:10], "corrupt or truncated PNG header"),
        "train/ant/cut1.jpg": (jpg[: len(jpg) // 2], "corrupt or truncated JPEG"),
        "train/bee/cut2.jpeg": (jpg[:200], "corrupt or truncated JPEG"),
        "test/ant/cut3.jpg": (jpg[:300], "corrupt or truncated JPEG"),
        "train/ant/empty1.jpg": (b"", "empty file (0 bytes)"),
        "train/bee/empty2.jpg": (b"", "empty file (0 bytes)"),
        "train/cat/empty3.png": (b"", "empty file (0 bytes)"),
        "test/bee/empty4.jpeg": (b"", "empty file (0 bytes)"),
        "train/ant/words.png": (text, "holds text"),
        "train/cat/readme.png": (text * 3, "holds text"),
        "test/cat/notes.jpg": (b"# csv,header\n1,2\n", "holds text"),
        "train/ant/notes.txt": (text, "unsupported file type .txt; expected .png, .jpg, .jpeg, .gif, .bmp or .webp"),
        "train/bee/labels.csv": (b"a,b\n", "unsupported file type .csv"),
        "train/cat/scan.tif": (encode("TIFF"), "unsupported file type .tif"),
        "test/ant/LICENSE": (text, "unsupported file type (no extension)"),
        "train/ant/noise1.gif": (b"\0" + bytes(np.random.default_rng(1).integers(0, 256, 300, np.uint8)), "not PNG"),
        "train/bee/noise2.gif": (b"\0" + bytes(np.random.default_rng(2).integers(0, 256, 500, np.uint8)), "not PNG"),
        "train/cat/noise3.webp": (b"\0" + bytes(np.random.default_rng(3).integers(0, 256, 90, np.uint8)), "not PNG"),
        "train/cat/archive.jpg": (b"PK\x03\x04\x14\0\0\0\x08\0" + bytes(range(256)), "not PNG"),
        "train/ant/half.gif": (encode("GIF")[:20], "corrupt or truncated GIF"),
        "train/bee/half.bmp": (encode("BMP", size=(40, 40))[:500], "corrupt or truncated BMP"),
        "train/cat/half.webp": (encode("WEBP", size=(40, 40))[:40], "corrupt or truncated WebP"),
        "train/bee/fake.gif": (png[: len(png) // 3], "corrupt or truncated PNG"),  # content decides, not the name
        "train/ant/huge.png": (huge_png(), "image too large: 10000000000 pixels, over PIL's decompression-bomb limit"),
        "test/bee/huge.png": (huge_png(), "image too large: 10000000000 pixels, over PIL's decompression-bomb limit"),
        "train/cat/zeros.bmp": (b"BM" + bytes(60), "corrupt or truncated BMP"),
    }
    for rel, (data, _) in bad.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.symlink(root / "gone.png", root / "train" / "bee" / "dangling.png")  # a broken link: unreadable
    return {**{rel: frag for rel, (_, frag) in bad.items()}, "train/bee/dangling.png": "unreadable file: a broken symbolic link to"}


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (links not followed): content hash or link target, plus mtime."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = "dir"
        state[path.relative_to(root).as_posix()] = (content, st.st_mtime_ns, st.st_mode)
    return state


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "messy"
    write_good(root)
    write_junk(root)
    return root, write_bad(root)


def test_fail_names_every_bad_file_in_one_error(messy: tuple[Path, dict[str, str]]) -> None:
    root, bad = messy
    assert len(bad) == 30
    with pytest.raises(DatasetError) as caught:
        read_image_folder(str(root), (8, 8), 3)
    message = str(caught.value)
    assert message.startswith(f"{root}: 30 bad files (")
    lines = {line.strip().split(": ", 1)[0]: line for line in message.splitlines()[1:-1]}
    assert set(lines) == {str(root / rel) for rel in bad}, "exactly the 30 bad files, one line each"
    for rel, fragment in bad.items():
        assert fragment in lines[str(root / rel)], (rel, lines[str(root / rel)])
    assert "ingest.on_bad_file: skip" in message and "replace or remove them" in message
    for junk in ("Thumbs.db", "desktop.ini", "Desktop.ini", "DS_Store", "__MACOSX", ".hidden", "._ok0"):
        assert junk not in message


def test_skip_leaves_bad_files_out_and_lists_them(messy: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, bad = messy
    before = tree_state(root)
    raw = read_image_folder(str(root), (8, 8), 3, on_bad_file="skip")
    assert tree_state(root) == before, "source files are never moved, deleted or altered"
    assert [b.path for b in raw.skipped] == sorted(bad)
    assert all(fragment in b.reason for b, fragment in zip(raw.skipped, (bad[p] for p in sorted(bad)), strict=True))
    assert raw.class_names == ["ant", "bee", "cat"]
    assert raw.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and raw.test_y.tolist() == [0, 1, 2]
    # first frame of the animated GIF (red 40), the BMP and the lossless WebP decode to their colours
    assert raw.train_x[0, 0, 0].tolist() == [40, 0, 0]
    assert raw.train_x[4, 0, 0].tolist() == [77, 178, 38] and raw.train_x[11, 0, 0].tolist() == [150, 105, 75]
    clean = tmp_path / "clean"  # the same good files and nothing else: the content digest is the same
    write_good(clean)
    assert raw.sources == read_image_folder(str(clean), (8, 8), 3).sources


def test_more_bad_files_than_listed_are_counted(tmp_path: Path) -> None:
    write_good(tmp_path)
    for i in range(57):
        (tmp_path / "train" / "bee" / f"e{i:02d}.png").write_bytes(b"")
    (tmp_path / "test" / "cat" / "z.txt").write_text("x")
    with pytest.raises(DatasetError) as caught:
        read_image_folder(str(tmp_path), (8, 8), 1)
    message = str(caught.value)
    assert "58 bad files (57 empty, 1 unsupported type)" in message
    listed = message.splitlines()[1:-1]
    assert len(listed) == 51 and listed[-1] == "  … and 8 more"
    assert listed[0] == f"  {tmp_path / 'test/cat/z.txt'}: unsupported file type .txt; expected " + (
        ".png, .jpg, .jpeg, .gif, .bmp or .webp"
    )  # sorted by relative path: test/ before train/
    assert len(re.findall(r"/e\d\d\.png: empty file \(0 bytes\)$", "\n".join(listed), re.M)) == 49


def test_a_class_with_only_bad_files_is_an_error_even_with_skip(tmp_path: Path) -> None:
    write_good(tmp_path)
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "a.png").write_bytes(b"")
    (tmp_path / "train" / "dog" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "test").rename(tmp_path / "held-out")  # no test split: only train's classes matter here
    with pytest.raises(DatasetError, match=r"train/dog: no usable image left once the bad files are skipped"):
        read_image_folder(str(tmp_path), (8, 8), 1, on_bad_file="skip")


# --------------------------------------------------------------------------------------------- the ingest stage


def stage_cfg(root: Path, on_bad_file: str) -> IngestConfig:
    return IngestConfig(dataset="image-folder", source=str(root), image_size=(8, 8), channels=3,
                        val_fraction=0.25, stream_fraction=0.0, shard_size=100, on_bad_file=on_bad_file)


def test_ingest_stage_fail_writes_nothing(messy: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from pipeline.stages import ingest

    root, bad = messy
    with pytest.raises(DatasetError, match="30 bad files") as caught:
        ingest.run(stage_cfg(root, "fail"), seed=0, out_dir=tmp_path / "out")
    assert all(str(root / rel) in str(caught.value) for rel in bad) and not (tmp_path / "out").exists()


def test_ingest_stage_skip_manifest_and_validation_report(messy: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from pipeline.core.config import ValidateConfig
    from pipeline.core.errors import StageError
    from pipeline.data import report as gx_report
    from pipeline.stages import ingest, validate

    root, bad = messy
    before = tree_state(root)
    manifest = ingest.run(stage_cfg(root, "skip"), seed=0, out_dir=tmp_path / "out")
    assert tree_state(root) == before
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == manifest and {s: v["count"] for s, v in manifest["splits"].items()} == {
        "train": 9, "val": 3, "test": 3, "stream": 0}
    assert [f["path"] for f in manifest["skipped_files"]] == sorted(bad)
    assert all(bad[f["path"]] in f["reason"] for f in manifest["skipped_files"])
    report_path = tmp_path / "validation.json"
    passed = validate.run(ValidateConfig(min_pixel_std=0.0), tmp_path / "out", report_path, tmp_path / "docs")
    report = json.loads(report_path.read_text())  # the test images are flat colours, hence min_pixel_std 0
    assert passed == report and report["success"] is True
    assert report["skipped_files"] == {"count": 30, "files": manifest["skipped_files"]}
    lines = gx_report.format_skipped(report["skipped_files"])
    assert lines[0] == "note: ingest skipped 30 bad source file(s) (ingest.on_bad_file: skip):"
    assert len(lines) == 12 and lines[-1] == "  … and 20 more (skipped_files in the report)"
    with pytest.raises(StageError, match="(?s)mean pixel in.*ingest skipped 30 bad source file"):
        validate.run(ValidateConfig(min_pixel_std=0.0, pixel_mean_range=(250.0, 254.0)), tmp_path / "out",
                     report_path, tmp_path / "docs")  # a failing validation still says what ingest left out
    assert json.loads(report_path.read_text())["skipped_files"]["count"] == 30


def test_cli_skip_and_fail(messy: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, bad = messy
    params = tmp_path / "params.yaml"
    text = (f"ingest:\n  dataset: image-folder\n  source: {root}\n  image_size: [8, 8]\n  channels: 3\n"
            "  val_fraction: 0.0\n  stream_fraction: 0.0\n  shard_size: 100\n")
    params.write_text(text)
    failed = CliRunner().invoke(app, ["ingest", "--params", str(params), "--out", str(tmp_path / "out")])
    assert failed.exit_code == 2 and "30 bad files" in failed.output and "Traceback" not in failed.output
    assert all(rel in failed.output for rel in bad) and not (tmp_path / "out").exists()
    params.write_text(text + "  on_bad_file: skip\n")
    done = CliRunner().invoke(app, ["ingest", "--params", str(params), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert "skipped 30 bad source file(s)" in done.output and all(rel in done.output for rel in bad)
    assert len(json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped_files"]) == 30
