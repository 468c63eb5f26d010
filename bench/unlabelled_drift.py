"""Unlabelled drift detection: which monitor signals fire, at which severity, on traffic without labels.

For every simulated shift of `mlops simulate` (brightness, contrast, noise, blur, label-shift) at several severities,
`--reps` batches of `--batch-size` images drawn (seeded) from the held-out stream split are shifted, scored by the
champion (its probabilities stand in for the server's captured `probs`), and assessed exactly as the monitor assesses
captured traffic (pipeline/monitoring/signals.assess_unlabelled, thresholds from params.yaml `monitor:`); labels are
never looked at. `--clean` unshifted batches give the false-alarm rate.

    .venv/bin/python bench/unlabelled_drift.py --workspace <a trained workspace with a champion>

Reads: <workspace>/params.yaml, data/ingested (train: the reference; test: the confidence reference; stream: the
traffic) and the champion of the workspace's MLflow registry. Writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SIGNALS = ("input.mean", "input.std", "input.sharpness", "class_mix.psi", "confidence.low_share")
SHORT = {
    "input.mean": "mean",
    "input.std": "std",
    "input.sharpness": "sharp",
    "class_mix.psi": "mix",
    "confidence.low_share": "conf",
}


def _batch(x, y, kind: str, severity: float, size: int, rng: np.random.Generator, num_classes: int):
    """One shifted batch of `size` stream images (label-shift: drawn from the re-mixed stream)."""
    from pipeline.monitoring import simulate

    if kind == "label-shift":
        xs, _ = simulate.apply_drift(x, y, kind, severity, rng, num_classes)
        return xs[np.sort(rng.choice(len(xs), size=min(size, len(xs)), replace=False))]
    idx = np.sort(rng.choice(len(x), size=size, replace=False))
    return simulate.apply_drift(x[idx], y[idx], kind, severity, rng, num_classes)[0]


def _row(name: str, results: list[dict]) -> str:
    fired = [set(r["fired"]) for r in results]
    rates = [f"{np.mean([s in f for f in fired]):.2f}" for s in SIGNALS]
    return f"| {name} | {len(results)} | {np.mean([bool(f) for f in fired]):.2f} | " + " | ".join(rates) + " |"


def main(argv: list[str] | None = None) -> int:
    """Print the detection table and the false-alarm rate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--clean", type=int, default=30)
    parser.add_argument("--severities", default="0.1,0.25,0.5,1.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", default="stream", help="held-out splits the traffic is drawn from (e.g. stream,val)")
    args = parser.parse_args(argv)

    from pipeline.core import io
    from pipeline.core.config import load_params
    from pipeline.monitoring import scoring, signals, simulate
    from pipeline.registry import store
    from pipeline.registry.champion import load_by_alias

    root = args.workspace.resolve()
    params = load_params(root / "params.yaml")
    store.use_project(root)
    champion = load_by_alias(params.register_.model_name)
    if champion is None:
        sys.exit(f"{root}: {params.register_.model_name} has no champion")
    model, data = champion.model(), root / params.paths.ingested
    profile = scoring.build_profile(data, model)
    pool = [io.read_split(data, split) for split in args.pool.split(",")]
    x, y = np.concatenate([p[0] for p in pool]), np.concatenate([p[1] for p in pool])
    num_classes, size = int(profile["num_classes"]), min(args.batch_size, len(x))
    rng = np.random.default_rng(args.seed)

    def assess(batch: np.ndarray) -> dict:
        probs = scoring.predict_probs(model, batch)
        return signals.assess_unlabelled(profile, batch, probs.argmax(axis=1), probs, params.monitor)

    cfg = params.monitor
    print(
        f"workspace {root}: champion v{champion.version}, {args.pool} {len(x)} images, batches of {size}; "
        f"p<{cfg.drift_p_value}, KS>={signals.drift.KS_MIN_STAT}, PSI>{cfg.psi_threshold}, unsure: max prob<"
        f"{cfg.low_confidence} share +>{cfg.max_low_confidence_increase} (ref "
        f"{signals.low_confidence_share(profile['confidence']['max_prob'], cfg.low_confidence):.3f} on "
        f"{profile['confidence']['split']})\n"
    )
    print("| shift | batches | detected | " + " | ".join(SHORT[s] for s in SIGNALS) + " |")
    print("|---|---|---|" + "---|" * len(SIGNALS))
    clean = [assess(_batch(x, y, "none", 0.0, size, rng, num_classes)) for _ in range(args.clean)]
    print(_row("none (false alarms)", clean))
    for kind in simulate.KINDS[1:]:
        for severity in (float(s) for s in args.severities.split(",")):
            results = [assess(_batch(x, y, kind, severity, size, rng, num_classes)) for _ in range(args.reps)]
            print(_row(f"{kind} {severity:g}", results))
    alarms = sum(bool(r["fired"]) for r in clean)
    print(f"\nfalse-alarm rate: {alarms}/{len(clean)} clean batches = {alarms / len(clean):.3f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
