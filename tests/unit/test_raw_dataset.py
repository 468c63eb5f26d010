"""The raw dataset is pinned: data/raw/fashion-mnist.dvc records the md5 of exactly the Debian package's files, and
`make dataset` (infra/local/dataset.py) materialises those bytes or refuses, never rewriting the pin; it also
restores the empty data/accepted/ a fresh clone lacks.

Every case runs in a throw-away DVC project holding a copy of the committed .dvc file, never in data/.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers_project import ROOT, run

SCRIPT = ROOT / "infra" / "local" / "dataset.py"
PIN = ROOT / "data" / "raw" / "fashion-mnist.dvc"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed")

spec = importlib.util.spec_from_file_location("dataset_script", SCRIPT)
assert spec and spec.loader
dataset = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dataset)


def pin() -> dict:
    return yaml.safe_load(PIN.read_text())["outs"][0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A DVC project (no remote) with the committed pin and nothing materialised."""
    work = tmp_path / "project"
    (work / "data" / "raw").mkdir(parents=True)
    shutil.copy(PIN, work / "data" / "raw" / PIN.name)
    run(["dvc", "init", "-q", "--no-scm"], work)
    return work


def materialise(work: Path, source: Path):
    return run([sys.executable, str(SCRIPT), "--no-install", "--copy-from", str(source)], work, check=False)


def corrupted_copy(tmp_path: Path) -> Path:
    """The four IDX files (the Debian ones where installed) with one byte of the train labels flipped."""
    src = tmp_path / "source"
    src.mkdir()
    for name in dataset.FILES:
        data = (DEBIAN / name).read_bytes() if DEBIAN.is_dir() else name.encode()
        (src / name).write_bytes(data)
    labels = src / "train-labels-idx1-ubyte.gz"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 0xFF
    labels.write_bytes(bytes(data))
    return src


def test_pin_tracks_the_folder_ingest_reads():
    out = pin()
    assert PIN.parent / out["path"] == ROOT / "data" / "raw" / "fashion-mnist"
    assert out["hash"] == "md5" and out["nfiles"] == 4
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["ingest"]["source"] == "data/raw/fashion-mnist"


@needs_debian
def test_committed_pin_is_the_md5_of_the_debian_files():
    """So `dvc pull` on a fresh clone (DVC checks what it fetches against this md5) gives exactly these bytes."""
    out = pin()
    assert dataset.dir_md5(DEBIAN) == out["md5"]
    assert sum(p.stat().st_size for p in DEBIAN.iterdir()) == out["size"]


def test_dir_md5_is_dvcs_own_directory_hash(tmp_path: Path):
    work = tmp_path / "w"
    (work / "folder" / "sub").mkdir(parents=True)
    (work / "folder" / "b.bin").write_bytes(bytes(range(256)))
    (work / "folder" / "a.txt").write_text("one\n")
    (work / "folder" / "sub" / "c.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 30)
    run(["dvc", "init", "-q", "--no-scm"], work)
    run(["dvc", "add", "-q", "folder"], work)
    assert dataset.dir_md5(work / "folder") == yaml.safe_load((work / "folder.dvc").read_text())["outs"][0]["md5"]


def test_materialise_refuses_a_corrupted_copy_and_changes_nothing(project: Path, tmp_path: Path):
    before = (project / "data/raw/fashion-mnist.dvc").read_bytes()
    result = materialise(project, corrupted_copy(tmp_path))
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "data/raw/fashion-mnist does not match data/raw/fashion-mnist.dvc" in message, message
    assert f"pinned {pin()['md5']}" in message and "dvc add data/raw/fashion-mnist" in message, message
    assert (project / "data/raw/fashion-mnist.dvc").read_bytes() == before
    assert not (project / "data/raw/fashion-mnist").exists()  # the bad copy it made is removed
    assert not any(p.is_file() for p in (project / ".dvc" / "cache").rglob("*"))


def test_materialise_refuses_an_existing_folder_that_differs_and_leaves_it(project: Path, tmp_path: Path):
    folder = project / "data/raw/fashion-mnist"
    shutil.copytree(corrupted_copy(tmp_path), folder)
    result = materialise(project, DEBIAN)
    assert result.returncode != 0
    assert f"rm -r {Path('data/raw/fashion-mnist')} && make dataset" in result.stderr, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(dataset.FILES)  # never overwritten


def test_materialise_says_what_to_do_when_there_is_nothing_to_copy(project: Path, tmp_path: Path):
    result = materialise(project, tmp_path / "nowhere")
    assert result.returncode != 0
    assert "install the Debian package dataset-fashion-mnist" in result.stderr
    assert "dvc remote add" in result.stderr


@needs_debian
def test_materialise_copies_the_pinned_bytes_into_the_dvc_cache(project: Path):
    before = (project / "data/raw/fashion-mnist.dvc").read_bytes()
    first = materialise(project, DEBIAN)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "copied 4 files" in first.stdout and "is in the DVC cache" in first.stdout
    assert (project / "data/raw/fashion-mnist.dvc").read_bytes() == before  # `dvc commit -f` kept the pin
    status = run(["dvc", "status", "--json", "data/raw/fashion-mnist.dvc"], project)
    assert json.loads(status.stdout) == {}  # workspace = pin, and the cache holds it (`dvc push` uploads it)
    again = materialise(project, DEBIAN)
    assert again.returncode == 0 and "copied" not in again.stdout


def test_materialise_creates_the_empty_accepted_folder_a_fresh_clone_lacks(project: Path):
    shutil.copy(ROOT / "data" / "accepted.dvc", project / "data" / "accepted.dvc")
    if yaml.safe_load((project / "data/accepted.dvc").read_text())["outs"][0]["nfiles"]:
        pytest.skip("the project's data/accepted.dvc pins accepted batches: only a DVC remote restores them")
    (project / "data/raw/fashion-mnist.dvc").unlink()
    result = materialise(project, DEBIAN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (project / "data/accepted").is_dir() and not any((project / "data/accepted").iterdir())
    status = run(["dvc", "status", "--json", "data/accepted.dvc"], project)
    assert json.loads(status.stdout) == {}  # in the cache too: `dvc push` uploads it, `dvc pull` restores it


def test_materialise_says_where_missing_accepted_batches_are(project: Path):
    (project / "data/raw/fashion-mnist.dvc").unlink()
    (project / "data/accepted.dvc").write_text(yaml.safe_dump(
        {"outs": [{"md5": "0123456789abcdef0123456789abcdef.dir", "size": 10, "nfiles": 1, "hash": "md5",
                   "path": "accepted"}]}))
    result = materialise(project, DEBIAN)
    assert result.returncode != 0
    assert "data/accepted is missing" in result.stderr and "dvc remote add" in result.stderr, result.stderr
