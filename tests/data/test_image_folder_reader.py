"""Image-folder reader: PNG/JPEG files of mixed sizes and modes in train/<class>/ and test/<class>/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.image_folder import read_image_folder
from pipeline.core.errors import DatasetError


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
    with pytest.raises(DatasetError, match="broken.png"):
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
    with pytest.raises(DatasetError, match="broken.png"):
        read_image_folder(str(folder), (8, 8), 1)
