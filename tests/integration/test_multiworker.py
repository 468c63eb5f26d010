"""Multi-worker training: two `pipeline.train.run` processes on localhost form a TF_CONFIG cluster
(MultiWorkerMirroredStrategy, gRPC collectives on CPU) and must end with identical weights.

Only the chief (worker 0) writes the model, metrics and plots; the other worker gets its own paths in this
test and must leave nothing there, and each worker keeps its own BackupAndRestore directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import write_ingested
from tests.helpers_project import tool_env
from tests.helpers_s3 import free_port

pytestmark = pytest.mark.integration

CLASSES = ["left", "middle", "right"]
TIMEOUT = 150
# A worker: train, then dump the in-memory weights of the model fit() trained (after run() returned, so
# after any end-of-training synchronisation) for the test to compare across processes.
ENTRY = r"""
import json, sys
from pathlib import Path
import numpy as np
import keras
from pipeline.stages import train
from pipeline.core.config import TrainConfig

data, out, backup = map(Path, sys.argv[1:4])
trained = []
fit = keras.Model.fit
def recording_fit(self, *args, **kwargs):
    trained.append(self)
    return fit(self, *args, **kwargs)
keras.Model.fit = recording_fit
cfg = TrainConfig(model="fast_net", width=8, epochs=2, batch_size=16, learning_rate=0.01)
metrics = train.run(cfg, 0, data, out / "model.keras", out / "train.json", out / "plots", backup)
np.savez(out.parent / f"{out.name}-weights.npz", *[np.asarray(w) for w in trained[0].get_weights()])
(out.parent / f"{out.name}-result.json").write_text(json.dumps(metrics))
"""
# what a TensorFlow build without usable CPU collectives says (then the test skips instead of failing)
NO_COLLECTIVES = ("Collective ops are not supported", "UNIMPLEMENTED: Collective", "No OpKernel was registered to "
                  "support Op 'CollectiveReduce")


def _patterns(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3, dtype=np.uint8), n_per_class)
    x = rng.integers(0, 60, size=(len(y), 16, 16, 1)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, :, 2 + 5 * int(label):5 + 5 * int(label)] = 220
    return x, y


def test_chief_detection_follows_the_tensorflow_rule(monkeypatch):
    from pipeline.ml import runtime

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert runtime.is_chief() and runtime.worker_task() is None
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    for task, chief in (({"type": "worker", "index": 0}, True), ({"type": "worker", "index": 1}, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert runtime.is_chief() is chief
    with_chief = {"chief": ["localhost:3"], **cluster}
    for task, chief in (({"type": "chief", "index": 0}, True), ({"type": "worker", "index": 0}, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": task}))
        assert runtime.is_chief() is chief


def test_two_workers_train_in_sync_and_only_the_chief_writes(tmp_path):
    from pipeline.stages import preprocess
    from pipeline.core.config import PreprocessConfig

    write_ingested(tmp_path / "ingested", {"train": _patterns(32, 1), "val": _patterns(8, 2),
                                           "test": _patterns(8, 3)}, CLASSES)
    preprocess.run(PreprocessConfig(channels=1), tmp_path / "ingested", tmp_path / "prepared")
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    backup = tmp_path / "workspace" / ".cache" / "train_backup"  # one workspace path, as `mlops train` uses

    procs = []
    started = time.monotonic()
    for index in range(2):
        out = tmp_path / f"worker{index}"
        env = tool_env({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                        "CUDA_VISIBLE_DEVICES": ""})
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-c", ENTRY, str(tmp_path / "prepared"), str(out),
                                        str(backup)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), log))
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, TIMEOUT - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    elapsed = time.monotonic() - started
    logs = [(tmp_path / f"worker{i}.log").read_text(errors="replace") for i in range(2)]
    codes = [proc.returncode for proc, _ in procs]
    if any(code != 0 for code in codes):
        if any(marker in log for marker in NO_COLLECTIVES for log in logs):
            pytest.skip("this TensorFlow build cannot run collective ops on CPU (MultiWorkerMirroredStrategy)")
        tails = "\n".join(f"--- worker{i} (exit {codes[i]}):\n{logs[i][-3000:]}" for i in range(2))
        pytest.fail(f"multi-worker training failed or timed out after {elapsed:.0f} s:\n{tails}")

    results = [json.loads((tmp_path / f"worker{i}-result.json").read_text()) for i in range(2)]
    assert [r["strategy"] for r in results] == ["multi_worker(2)", "multi_worker(2)"]
    weights = [np.load(tmp_path / f"worker{i}-weights.npz") for i in range(2)]
    assert len(weights[0].files) == len(weights[1].files) > 0
    differing = [k for k in weights[0].files if not np.array_equal(weights[0][k], weights[1][k])]
    assert not differing, f"{len(differing)} of {len(weights[0].files)} weight arrays differ between the workers"
    assert results[0]["val_accuracy"] == results[1]["val_accuracy"]  # metrics are all-reduced as well

    # only the chief wrote the outputs, and they hold the same weights
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    for name in ("model.keras", "train.json", "plots/history.csv", "plots/training_curves.png"):
        assert (chief / name).is_file(), name
    assert not other.exists() or not any(other.rglob("*")), f"worker 1 wrote {list(other.rglob('*'))}"
    assert json.loads((chief / "train.json").read_text())["strategy"] == "multi_worker(2)"
    import keras

    saved = keras.models.load_model(chief / "model.keras").get_weights()
    assert all(np.array_equal(a, weights[0][k]) for a, k in zip(saved, weights[0].files))
    # each worker had its own BackupAndRestore dir, removed after a completed run
    assert not backup.exists() and not backup.with_name("train_backup-worker1").exists()
    print(f"\n[multiworker] 2 workers, {len(weights[0].files)} identical weight arrays, {elapsed:.1f} s wall")
