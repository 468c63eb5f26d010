"""Atomic writes after a writer was killed outright: its temp files are swept by the next writer, a live one's kept."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.core import io


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_path_sweeps_the_temp_file_of_a_killed_writer_and_keeps_a_live_ones(tmp_path):
    target = tmp_path / "train.json"
    host = io._HOST
    dead = tmp_path / f".train.json.tmp-{_dead_pid()}@{host}.abc123.json"
    live = tmp_path / f".train.json.tmp-{os.getpid()}@{host}.def456.json"
    other = tmp_path / f".train.json.tmp-{_dead_pid()}@another-host.ghi789.json"  # not ours to judge
    for path in (dead, live, other):
        path.write_text("{")
    io.write_json(target, {"ok": True})
    assert io.read_json(target) == {"ok": True}
    assert not dead.exists() and live.exists() and other.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".train.json."))
    assert leftovers == sorted([live.name, other.name]), "the write itself leaves no temp file"


def test_atomic_path_names_its_temp_file_after_the_writer(tmp_path):
    target = tmp_path / "model.keras"
    with io.atomic_path(target) as tmp:
        assert tmp.name.startswith(f".model.keras.tmp-{os.getpid()}@{io._HOST}.") and tmp.suffix == ".keras"
        tmp.write_bytes(b"model")
    assert target.read_bytes() == b"model" and not tmp.exists()
