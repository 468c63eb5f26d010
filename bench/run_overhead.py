"""Overhead of "a run is a fresh clone + a commit": clone + checkout + dvc pull + commit + git/DVC push, as a
ratio of the run's wall time; and the clone-based run ÷ the same retrain in a standing workspace.

Each trial retrains (a new `train.epochs`: train → compress → evaluate → register rerun) twice, alternating:
(A) in one long-lived workspace (`dvc repro` only: the baseline), (B) as the training flow does it — `git clone`
of the remote, check out runs/latest, `dvc pull`, the same params change, `dvc repro`, then commit_run (snapshot
commit, `dvc push --run-cache`, `git push`, version tags, alias). Same data, params and code on both sides, each
logging to its workspace's embedded MLflow store (the test helpers keep MLFLOW_* out of subprocesses); git
remote = a bare repository, DVC remote = a real S3 server (nanio) on this machine.

    python bench/run_overhead.py [--trials 3] [--per-class 300] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import make_project, run, save, timed
from tests.helpers_s3 import start_s3_server

MODEL = "bench-runs"


def _remotes(work: Path, tmp: Path, endpoint: str) -> str:
    """A bare git remote (returned as a file:// URL) and the S3 DVC remote for `work`."""
    bare = tmp / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    run(["git", "remote", "add", "origin", f"file://{bare}"], work)
    run(["dvc", "remote", "add", "-d", "s3", "s3://dvc/bench"], work)
    run(["dvc", "remote", "modify", "s3", "endpointurl", endpoint], work)
    return f"file://{bare}"


def _clone_run(url: str, dest: Path, epochs: int, name: str) -> dict[str, float]:
    """One clone-based retrain, phase by phase (seconds)."""
    from pipeline.core.config import load_params, update_params
    from pipeline.registry import store
    from pipeline.versioning.commit import commit_run
    from pipeline.versioning.git import Git
    from pipeline.versioning.workspace import checkout_base, configure_dvc_remote, dvc_pull

    quiet = lambda _line: None  # noqa: E731
    phases: dict[str, float] = {}
    t = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--depth", "1", url, str(dest)], check=True)  # as Prefect's git_clone
    base = checkout_base(Git(dest), "origin", quiet)
    phases["clone"] = time.perf_counter() - t
    t = time.perf_counter()
    configure_dvc_remote(dest, quiet)
    dvc_pull(dest, quiet)
    phases["pull"] = time.perf_counter() - t
    update_params(dest / "params.yaml", {"train.epochs": epochs})
    phases["repro"] = timed(["dvc", "repro"], dest)
    t = time.perf_counter()
    store.use_project(dest)
    commit_run(dest, load_params(dest / "params.yaml"), name, "origin", base, quiet)
    phases["commit_push"] = time.perf_counter() - t
    return phases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    from pipeline.core.config import update_params

    tmp = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    endpoint, key, secret, stop = start_s3_server(tmp / "s3")
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "MLOPS_DVC_REMOTE": "s3://dvc/bench",
        }
    )
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="dvc")
        params = {
            "ingest": {"max_per_class": args.per_class},
            "train": {"epochs": args.epochs},
            "compress": {"fine_tune_epochs": 1},
            "evaluate": {"min_accuracy": 0.3, "per_class_floor": 0.0, "max_drop_vs_fp32": 0.1},
            "register": {"model_name": MODEL, "experiment": "bench-runs"},
        }
        seed = make_project(tmp / "seed", params)
        url = _remotes(seed, tmp, endpoint)
        run(["dvc", "repro"], seed)
        run(["mlops", "commit-run", "--name", "seed", "--remote", "origin"], seed)
        workspace = seed  # the standing workspace of the baseline: data, models and caches already there
        rows = []
        for trial in range(args.trials):
            epochs = args.epochs + 1 + trial
            update_params(workspace / "params.yaml", {"train.epochs": epochs})
            baseline = timed(["dvc", "repro"], workspace)
            phases = _clone_run(url, tmp / f"clone-{trial}", epochs, f"bench-{trial}")
            total = sum(phases.values())
            overhead = phases["clone"] + phases["pull"] + phases["commit_push"]
            rows.append(
                {
                    "epochs": epochs,
                    "workspace_repro_s": round(baseline, 2),
                    **{f"{k}_s": round(v, 2) for k, v in phases.items()},
                    "clone_run_total_s": round(total, 2),
                    "overhead_ratio": round(overhead / total, 4),
                    "clone_run_vs_workspace": round(total / baseline, 3),
                }
            )
            print(rows[-1], flush=True)
    finally:
        stop()
    ratios = [r["overhead_ratio"] for r in rows]
    slowdowns = [r["clone_run_vs_workspace"] for r in rows]
    save(
        "run_overhead",
        {
            "what": (
                "clone + checkout + dvc pull + commit/push ÷ wall time of a clone-based retrain; and that run ÷ "
                "the same retrain (`dvc repro`) in a standing workspace. Alternating, same params/data/code."
            ),
            "params": params,
            "trials": rows,
            "overhead_ratio_min": min(ratios),
            "overhead_ratio_median": statistics.median(ratios),
            "clone_run_vs_workspace_min": min(slowdowns),
            "clone_run_vs_workspace_median": statistics.median(slowdowns),
        },
    )


if __name__ == "__main__":
    main()
