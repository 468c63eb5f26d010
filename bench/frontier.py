"""The accuracy/time frontier: test accuracy vs training wall time for the models offered, at budgets of 1–15 min.

    python bench/frontier.py [--budgets 1 2 5 10 15] [--only LABEL ...]

Every point is the real train stage (`python -m pipeline.stages.train`, a fresh process) on full Fashion-MNIST
prepared by the real ingest + preprocess stages, with `train.budget_minutes` sizing its schedule to the budget
(pipeline/ml/budget.py), except the point labelled `default`: params.yaml's train section exactly as `make run`
trains it. Wall time is the stage's whole process; test accuracy is the saved Keras model on the 10,000 official
test images, also with horizontal-flip test-time augmentation (mean of the logits of the image and its mirror).

A point is on the frontier when no point trained in less or equal wall time reaches a higher test accuracy.
Points are cached under .cache/frontier/ by a key over the train stage's code, the train config and the data
manifest: a rerun retrains only what changed. Results: section "frontier" of bench/results.json, plot
bench/frontier.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common import ROOT, save, tool_env

CACHE = ROOT / ".cache" / "frontier"
# label -> train-section overrides on top of params.yaml's train section
CONFIGS: dict[str, dict] = {
    "fast_net w32": {},
    "seed_cnn": {"model": "seed_cnn", "learning_rate": 1e-3, "augment": {"flip": False, "translate": 0.0}},
}
# (label, budget minutes) in the order they run; `default` is params.yaml's train section as `make run` trains it
# (14 epochs, no budget). Flip test-time augmentation is measured on every point; the float32 vs bfloat16 lever
# has its own benchmark (bench/precision.py).
PLAN: list[tuple[str, float | None]] = [
    ("seed_cnn", 1),
    ("fast_net w32", 1),
    ("seed_cnn", 2),
    ("fast_net w32", 2),
    ("seed_cnn", 5),
    ("fast_net w32", 5),
    ("default", None),
    ("fast_net w32", 10),
    ("seed_cnn", 15),
]


def stage_code() -> list[Path]:
    """The train stage's code: the .py files among its deps in dvc.yaml."""
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    return [ROOT / d for d in deps if d.endswith(".py")]


def prepared_data(work: Path) -> Path:
    """Full Fashion-MNIST through the real ingest + preprocess stages (params.yaml's settings), once."""
    from pipeline.core.config import load_params
    from pipeline.stages import ingest, preprocess

    out = work / "prepared"
    if not (out / "stats.json").is_file():
        params = load_params(ROOT / "params.yaml")
        source = (ROOT / params.ingest.source).resolve()
        ingest.run(params.ingest.model_copy(update={"source": str(source)}), params.seed, work / "ingested")
        preprocess.run(params.preprocess, work / "ingested", out)
    return out


def train_section(label: str, budget: float | None) -> dict:
    """params.yaml's train section with the label's overrides and the budget."""
    train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    if label != "default":
        train.update(CONFIGS[label], budget_minutes=budget)
    return train


def cache_key(train: dict, prepared: Path) -> str:
    """sha256 over the train stage's code, the train section and the prepared data's stats."""
    digest = hashlib.sha256(json.dumps(train, sort_keys=True).encode())
    digest.update((prepared / "stats.json").read_bytes())
    for path in stage_code():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def train_point(train: dict, prepared: Path, out: Path) -> tuple[dict, float]:
    """Run the train stage in a fresh process; its metrics and whole-process wall seconds."""
    out.mkdir(parents=True, exist_ok=True)
    seed = yaml.safe_load((ROOT / "params.yaml").read_text())["seed"]
    (out / "params.yaml").write_text(yaml.safe_dump({"seed": seed, "train": train}))
    cmd = [sys.executable, "-m", "pipeline.stages.train", "--params", str(out / "params.yaml")]
    for flag, name in (("--data", None), ("--model", "model.keras"), ("--metrics", "train.json")):
        cmd += [flag, str(prepared if name is None else out / name)]
    cmd += ["--plots", str(out / "plots"), "--backup", str(out / "backup")]
    started = time.perf_counter()
    with open(out / "train.log", "w") as log:
        subprocess.run(cmd, cwd=out, env=tool_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((out / "train.json").read_text()), time.perf_counter() - started


def test_accuracy(model_path: Path, prepared: Path) -> tuple[float, float]:
    """(plain, flip-TTA) accuracy of the saved Keras model on the test split."""
    import keras
    import numpy as np

    from pipeline.core import io

    x, y = io.read_split(prepared, "test")
    model = keras.models.load_model(model_path, compile=False)
    logits = model.predict(x.astype("float32"), batch_size=512, verbose=0)
    mirrored = model.predict(x[:, :, ::-1].astype("float32"), batch_size=512, verbose=0)
    return float(np.mean(logits.argmax(1) == y)), float(np.mean((logits + mirrored).argmax(1) == y))


def measure(label: str, budget: float | None, prepared: Path, work: Path) -> dict:
    """One frontier point, from the cache when the code, config and data are unchanged."""
    train = train_section(label, budget)
    key = cache_key(train, prepared)
    cached = CACHE / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    out = work / f"{label.replace(' ', '_')}-{budget}"
    metrics, wall = train_point(train, prepared, out)
    plain, tta = test_accuracy(out / "model.keras", prepared)
    point = {
        "label": label,
        "model": train["model"],
        "width": train["width"],
        "precision": metrics.get("precision"),
        "budget_minutes": budget,
        "epochs": metrics["epochs"],
        "wall_seconds": round(wall, 1),
        "fit_seconds": metrics["fit_seconds"],
        "step_seconds": (metrics.get("budget") or {}).get("step_seconds"),
        "val_accuracy": round(metrics["val_accuracy"], 4),
        "test_accuracy": round(plain, 4),
        "test_accuracy_flip_tta": round(tta, 4),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "cache_key": key,
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(point))
    return point


def mark_frontier(points: list[dict], key: str = "test_accuracy") -> None:
    """on_frontier: no point with wall time <= this one's has a higher accuracy."""
    for p in points:
        p["on_frontier"] = not any(
            q is not p and q["wall_seconds"] <= p["wall_seconds"] and q[key] > p[key] for q in points
        )


def plot(points: list[dict], path: Path) -> None:
    """Test accuracy vs wall minutes, one line per configuration, the frontier drawn as a step."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(p["label"] for p in points):
        pts = sorted((p for p in points if p["label"] == label), key=lambda p: p["wall_seconds"])
        style = "*" if label == "default" else "o-"
        ax.plot([p["wall_seconds"] / 60 for p in pts], [p["test_accuracy"] for p in pts], style, ms=9, label=label)
    front = sorted((p for p in points if p["on_frontier"]), key=lambda p: p["wall_seconds"])
    ax.step([p["wall_seconds"] / 60 for p in front], [p["test_accuracy"] for p in front], "k:", where="post", lw=1)
    ax.set_xlabel("training wall time, whole train stage (min)")
    ax.set_ylabel("test accuracy (Keras, 10,000 images)")
    ax.set_title("Fashion-MNIST accuracy/time frontier, 2 CPU cores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    """Measure (or reuse) every planned point, mark the frontier, save results and the plot."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="*", help="only these budgets (minutes) of the plan")
    ap.add_argument("--only", nargs="*", help="only these labels of the plan")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "frontier-work")
    args = ap.parse_args()
    prepared = prepared_data(args.work)
    points = []
    for label, budget in PLAN:
        if (args.only and label not in args.only) or (args.budgets and budget not in args.budgets):
            continue
        points.append(measure(label, budget, prepared, args.work))
        print(json.dumps(points[-1]), flush=True)
    mark_frontier(points)
    plot(points, ROOT / "bench" / "frontier.png")
    default = next((p for p in points if p["label"] == "default"), None)
    save(
        "frontier",
        {
            "command": "python bench/frontier.py" + (" (subset)" if args.only or args.budgets else ""),
            "points": points,
            "default": default,
            "default_on_frontier": default["on_frontier"] if default else None,
        },
    )


if __name__ == "__main__":
    main()
