"""Seeded fault trials of the stage processes: `mlops train`, `mlops compress` and `dvc repro train` are killed
with SIGKILL at a uniformly random moment of their run (tests/reliability/trials.py), then rerun.

Each operation's uninterrupted duration is measured once; trial `seed` kills at `kill_moment(op, seed, duration)`.
Invariants, checked after the kill and after the rerun:

* every output is the previous complete output, absent, or a complete new one — never half-written — and the
  rerun leaves no temp files beside it;
* train: the rerun resumes from the checkpoint and ends with exactly the configured epochs (history rows
  0..E-1 once each); the epochs the killed process completed are bit-identical to the uninterrupted run's
  (training is deterministic on CPU); a run that did not resume is bit-identical throughout; a resumed one ends
  within measured tolerances of it (BackupAndRestore restores weights and optimizer, not the shuffle/dropout RNG
  streams, so the epochs after the resume see other batches: final train loss within 5 %, val loss within 3 %,
  val accuracy within 1 point — measured: ≤ 3.2 %, ≤ 1.6 %, ≤ 1 of 300 images over kills after epochs 1-5);
* compress: models/compressed is the previous output or a complete new one; the rerun's .tflite files are
  byte-identical to an uninterrupted run's;
* dvc repro: dvc.lock always parses and is the old lock or the complete new one (its outs match the files);
  the rerun completes and `dvc status` is clean.

    FAULT_TRIALS=20 pytest tests/reliability/test_fault_trials_stages.py     # replay: FAULT_TRIALS=1 FAULT_SEED=<s>
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import io
from tests.helpers import write_ingested
from tests.reliability.common import (
    bump,
    kill_group,
    snapshot,
    start,
    subprocess_env,
    temp_leftovers,
    wait_for,
    write_yaml,
)
from tests.reliability.trials import Trial, kill_moment, record, run_and_kill, timed, trial_seeds

pytestmark = pytest.mark.integration

EPOCHS = 6
PARAMS = {
    "seed": 0,
    # 3,000 16x16 images with 15 % label noise: the loss does not saturate, so the comparison means something
    "train": {"model": "fast_net", "width": 8, "epochs": EPOCHS, "batch_size": 32, "learning_rate": 0.01,
              "augment": {"flip": False, "translate": 0.0}},
    "compress": {"target_sparsity": 0.5, "fine_tune_epochs": 1, "pruning_frequency": 2, "representative_samples": 20},
}
CLASSES = ["left", "middle", "right"]
TRAIN_OUTPUTS = ("model.keras", "train.json", "plots/history.csv", "plots/training_curves.png")
PNG_END = b"IEND\xaeB`\x82"
TOLERANCE = {"loss": 0.05, "val_loss": 0.03}  # relative; val_accuracy: absolute 0.01


def _patterns(n_per_class: int, seed: int, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """16x16 noise with a faint 1-px bar whose column (jittered) depends on the class; `noise` of labels random."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3, dtype=np.uint8), n_per_class)
    x = rng.integers(0, 140, size=(len(y), 16, 16, 1)).astype(np.uint8)
    for i, label in enumerate(y):
        col = 2 + 5 * int(label) + rng.integers(-2, 3)
        x[i, :, col] = np.minimum(x[i, :, col].astype(int) + 60, 255)
    flipped = rng.random(len(y)) < noise
    y[flipped] = rng.integers(0, 3, int(flipped.sum()))
    order = rng.permutation(len(y))
    return x[order], y[order]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from pipeline.core.config import PreprocessConfig
    from pipeline.stages import preprocess

    root = tmp_path_factory.mktemp("trials-data")
    write_ingested(root / "ingested", {"train": _patterns(1000, 1), "val": _patterns(100, 2),
                                       "test": _patterns(20, 3), "stream": _patterns(5, 4)}, CLASSES)
    preprocess.run(PreprocessConfig(channels=1), root / "ingested", root / "prepared")
    write_yaml(root / "params.yaml", PARAMS)
    return root


def _mlops(prepared: Path, stage: str, **paths: Path) -> list[str]:
    args = [f"--{k}={v}" for k, v in paths.items()]
    return [sys.executable, "-m", "pipeline.cli", stage, "--params", str(prepared / "params.yaml"),
            "--data", str(prepared / "prepared"), *args]


def _train_cmd(prepared: Path, work: Path) -> list[str]:
    return _mlops(prepared, "train", model=work / "model.keras", metrics=work / "train.json",
                  plots=work / "plots", backup=work / "backup")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _epochs(path: Path) -> list[int]:
    return [int(row["epoch"]) for row in _rows(path)]


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> dict:
    """One uninterrupted `mlops train` (a subprocess, as the trials run it): outputs, history, wall time."""
    work = tmp_path_factory.mktemp("reference")
    duration = timed(_train_cmd(prepared, work), work, subprocess_env(), work / "train.log")
    assert _epochs(work / "plots" / "history.csv") == list(range(EPOCHS))
    return {"dir": work, "duration": duration, "rows": _rows(work / "plots" / "history.csv"),
            "metrics": io.read_json(work / "train.json")}


# --------------------------------------------------------------------------------------------- train


def _complete(path: Path) -> bool:
    """A whole file of its kind: a readable zip (.keras), JSON, a CSV of every epoch, a PNG up to its IEND."""
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    if path.suffix == ".json":
        return isinstance(json.loads(path.read_text()), dict)
    if path.suffix == ".csv":
        return _epochs(path) == list(range(EPOCHS))
    return path.read_bytes().endswith(PNG_END)


def _previous_or_complete(work: Path, previous: dict) -> bool:
    """Each output: byte-identical to the previous one, absent, or a complete new file."""
    for name, digest in previous.items():
        path = work / name
        if path.exists() and snapshot(path) != digest and not _complete(path):
            return False
    return True


def _close(value: float, ref: float, key: str) -> bool:
    if key == "val_accuracy":
        return abs(value - ref) <= 0.01
    return abs(value - ref) <= TOLERANCE[key] * abs(ref)


def _train_invariants_after_rerun(work: Path, reference: dict) -> dict:
    metrics = io.read_json(work / "train.json")
    rows = _rows(work / "plots" / "history.csv")
    resumed_at = EPOCHS - metrics["epochs_run_this_process"] if metrics["resumed"] else 0
    ref = reference["metrics"]
    return {
        "exactly the configured epochs, each once": lambda: [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
        and metrics["epochs"] == EPOCHS,
        "epochs before the resume bit-identical to the uninterrupted run": lambda: rows[:resumed_at]
        == reference["rows"][:resumed_at],
        "not resumed → bit-identical to the uninterrupted run": lambda: metrics["resumed"] or rows == reference["rows"],
        "final metrics within tolerance of the uninterrupted run": lambda: all(
            _close(metrics[k], ref[k], k) for k in ("loss", "val_loss", "val_accuracy")),
        "outputs complete": lambda: all(_complete(work / name) for name in TRAIN_OUTPUTS),
        "no temp files or checkpoint left": lambda: not any(temp_leftovers(work / n) for n in TRAIN_OUTPUTS)
        and not (work / "backup").exists(),
    }


@pytest.mark.parametrize("seed", trial_seeds())
def test_train_killed_at_a_random_moment_resumes_to_the_uninterrupted_result(seed, prepared, reference, tmp_path,
                                                                              fault_table):
    work = tmp_path / "work"
    for name in TRAIN_OUTPUTS:  # the previous complete outputs (a finished run's) are in place
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(reference["dir"] / name, work / name)
    previous = {name: snapshot(work / name) for name in TRAIN_OUTPUTS}
    trial = Trial("train", seed, kill_moment("train", seed, reference["duration"]))
    cmd, env = _train_cmd(prepared, work), subprocess_env()
    trial.killed = run_and_kill(cmd, work, env, tmp_path / "killed.log", trial.kill_at)
    checkpoint_csv = work / "backup" / "history.csv"
    trial.check({
        "outputs previous or complete": lambda: _previous_or_complete(work, previous),
        "completed epochs bit-identical to the uninterrupted run": lambda: not checkpoint_csv.exists()
        or _rows(checkpoint_csv) == reference["rows"][:len(_rows(checkpoint_csv))],
    }, "after kill")
    timed(cmd, work, env, tmp_path / "rerun.log")
    trial.check(_train_invariants_after_rerun(work, reference), "after rerun")
    record(fault_table, trial)


def _checkpoint_epoch(work: Path) -> int:
    """Epochs completed according to the BackupAndRestore metadata (0 while none / while being written)."""
    try:
        return int(json.loads((work / "backup" / "state" / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def test_train_killed_while_writing_its_checkpoint_resumes_from_the_previous_one(prepared, reference, tmp_path,
                                                                                 tally):
    """The one moment a random kill rarely hits: during the checkpoint write, leaving torn weights and the
    previous metadata. The run resumes from the checkpoint before (repeating one epoch, recorded once)."""
    bump(tally, "faults_injected")
    work, env = tmp_path / "work", subprocess_env()
    cmd, log = _train_cmd(prepared, work), tmp_path / "killed.log"
    proc = start(cmd, work.parent, env, log)
    try:
        wait_for(lambda: _checkpoint_epoch(work) >= 2, 240, "the 2nd epoch's checkpoint", proc=proc, log=log)
    finally:
        kill_group(proc)
    completed = _checkpoint_epoch(work)
    assert 2 <= completed < EPOCHS, f"the kill did not land mid-run (checkpoint after epoch {completed})"
    state = work / "backup" / "state"  # weights torn mid-write; the metadata not yet updated (written after them)
    weights = state / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    shutil.copy(state / "training_metadata.json.bkp", state / "training_metadata.json")
    timed(cmd, work.parent, env, tmp_path / "rerun.log")
    metrics = io.read_json(work / "train.json")
    assert metrics["resumed"] and metrics["epochs_run_this_process"] == EPOCHS - (completed - 1), metrics
    broken = [name for name, ok in _train_invariants_after_rerun(work, reference).items() if not ok()]
    assert not broken, (broken, metrics, reference["metrics"])
    bump(tally, "faults_survived")


# --------------------------------------------------------------------------------------------- compress


def _compress_cmd(prepared: Path, model: Path, work: Path) -> list[str]:
    return _mlops(prepared, "compress", model=model, out=work / "compressed", metrics=work / "compress.json")


@pytest.fixture(scope="module")
def compress_reference(prepared, reference, tmp_path_factory) -> dict:
    """The previous complete output (a cheap configuration: no pruning) and one uninterrupted, timed run."""
    from pipeline.core.config import CompressConfig
    from pipeline.stages import compress

    root = tmp_path_factory.mktemp("compress")
    compress.run(CompressConfig(target_sparsity=0.0, fine_tune_epochs=0, representative_samples=10), 0,
                 prepared / "prepared", reference["dir"] / "model.keras", root / "previous", root / "previous.json")
    work = root / "uninterrupted"
    duration = timed(_compress_cmd(prepared, reference["dir"] / "model.keras", work), root, subprocess_env(),
                     root / "uninterrupted.log")
    return {"previous": root / "previous", "duration": duration, "output": snapshot(work / "compressed"),
            "metrics": io.read_json(work / "compress.json")}


def _tflite(output: dict | None) -> dict:
    """The .tflite files of a models/compressed snapshot (pruned.keras carries its save time: never identical)."""
    return {name: digest for name, digest in (output or {}).items() if name.endswith(".tflite")}


def _whole_new_output(out: Path, new: dict) -> bool:
    """models/compressed holds the complete new output: every file, the .tflite ones as an uninterrupted run's."""
    now = snapshot(out)
    return set(now or {}) == set(new) and _tflite(now) == _tflite(new) and _complete(out / "pruned.keras")


@pytest.mark.parametrize("seed", trial_seeds())
def test_compress_killed_at_a_random_moment_keeps_a_whole_output_and_reruns(seed, prepared, reference,
                                                                             compress_reference, tmp_path,
                                                                             fault_table):
    out, metrics = tmp_path / "compressed", tmp_path / "compress.json"
    shutil.copytree(compress_reference["previous"], out)
    previous, new = snapshot(out), compress_reference["output"]
    assert _tflite(previous) != _tflite(new) and len(previous) == len(new) == 5
    trial = Trial("compress", seed, kill_moment("compress", seed, compress_reference["duration"]))
    cmd, env = _compress_cmd(prepared, reference["dir"] / "model.keras", tmp_path), subprocess_env()
    trial.killed = run_and_kill(cmd, tmp_path, env, tmp_path / "killed.log", trial.kill_at)
    trial.check({
        "models/compressed the previous output or the complete new one": lambda: snapshot(out) == previous
        or _whole_new_output(out, new),
        "metrics absent or complete": lambda: not metrics.exists() or io.read_json(metrics)["variants"],
    }, "after kill")
    timed(cmd, tmp_path, env, tmp_path / "rerun.log")
    trial.check({
        ".tflite files byte-identical to an uninterrupted run's": lambda: _whole_new_output(out, new),
        "metrics match the files": lambda: all(io.sha256_file(out / f"{v}.tflite") == info["sha256"]
                                               for v, info in io.read_json(metrics)["variants"].items()),
        "no temp files left": lambda: not temp_leftovers(out) and not temp_leftovers(metrics),
    }, "after rerun")
    record(fault_table, trial)


# --------------------------------------------------------------------------------------------- dvc repro

DVC_YAML = {"stages": {"train": {
    "cmd": "python -m pipeline.stages.train --data data/prepared --model models/model.keras "
           "--metrics metrics/train.json --plots plots/train --backup .cache/train_backup",
    "deps": ["data/prepared"],
    "params": ["seed", "train"],
    "outs": ["models/model.keras", {"plots/train/training_curves.png": {"cache": False}}],
    "metrics": [{"metrics/train.json": {"cache": False}}],
    "plots": [{"plots/train/history.csv": {"cache": False}}],
}}}
NEW_LR = 0.02  # the change that makes the stage dirty


def _dvc(ws: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=ws, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def _set_lr(ws: Path, lr: float) -> None:
    params = {**PARAMS, "train": {**PARAMS["train"], "learning_rate": lr}}
    write_yaml(ws / "params.yaml", params)


@pytest.fixture(scope="module")
def dvc_workspace(prepared, tmp_path_factory) -> dict:
    """A tiny DVC workspace (no git) whose train stage ran once (the old dvc.lock), then a param changed; the
    duration of one uninterrupted `dvc repro train` of the change, measured on a copy."""
    root = tmp_path_factory.mktemp("dvc")
    ws = root / "template"
    shutil.copytree(prepared / "prepared", ws / "data" / "prepared")
    write_yaml(ws / "dvc.yaml", DVC_YAML)
    _set_lr(ws, PARAMS["train"]["learning_rate"])
    for args in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"], ["repro", "train"]):
        result = _dvc(ws, *args)
        assert result.returncode == 0, result.stdout + result.stderr
    _set_lr(ws, NEW_LR)
    copy = root / "measure"
    shutil.copytree(ws, copy, symlinks=True)
    duration = timed([str(Path(sys.executable).parent / "dvc"), "repro", "train"], copy, subprocess_env(),
                     root / "measure.log")
    return {"template": ws, "old_lock": (ws / "dvc.lock").read_bytes(), "duration": duration}


def _lock_is_new_and_whole(ws: Path) -> bool:
    """dvc.lock records the new params and the md5 of the model file now in the workspace."""
    stage = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]["train"]
    model = next(o for o in stage["outs"] if o["path"] == "models/model.keras")
    digest = hashlib.md5((ws / "models" / "model.keras").read_bytes()).hexdigest()
    return stage["params"]["params.yaml"]["train"]["learning_rate"] == NEW_LR and model["md5"] == digest


@pytest.mark.parametrize("seed", trial_seeds())
def test_dvc_repro_killed_at_a_random_moment_never_leaves_a_half_written_lock(seed, dvc_workspace, tmp_path,
                                                                               fault_table):
    ws = tmp_path / "ws"
    shutil.copytree(dvc_workspace["template"], ws, symlinks=True)
    old = dvc_workspace["old_lock"]
    trial = Trial("dvc repro", seed, kill_moment("dvc repro", seed, dvc_workspace["duration"]))
    cmd, env = [str(Path(sys.executable).parent / "dvc"), "repro", "train"], subprocess_env()
    trial.killed = run_and_kill(cmd, ws, env, tmp_path / "killed.log", trial.kill_at)
    trial.check({
        "dvc.lock parses as YAML": lambda: isinstance(yaml.safe_load((ws / "dvc.lock").read_text()), dict),
        "dvc.lock the old one or the complete new one": lambda: (ws / "dvc.lock").read_bytes() == old
        or _lock_is_new_and_whole(ws),
    }, "after kill")
    timed(cmd, ws, env, tmp_path / "rerun.log")
    trial.check({
        "dvc.lock the complete new one": lambda: _lock_is_new_and_whole(ws),
        "dvc status clean": lambda: "up to date" in _dvc(ws, "status").stdout,
    }, "after rerun")
    record(fault_table, trial)
