"""Labelling requests: when unlabelled (captured) traffic drifts, ask people to label some of its images.

A request lists up to `monitor.label_request_size` request ids of one captured batch - the least confident answers
first (half of the request), then a seeded random sample of the rest (so the labels also measure the batch as a
whole) - and why: the signals that fired, with values and thresholds. It is written as JSON next to the monitor
state (`<state dir>/label-requests/<id>.json`, versioned in git with the state) and shown as a Prefect artifact by
the flow. The images themselves wait in `monitor.captured`; `mlops label` (pipeline/monitoring/labels.py) joins the
answers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.core import io

REQUESTS_DIR = "label-requests"


def choose(max_prob: np.ndarray, size: int, seed: str) -> list[tuple[int, str]]:
    """(row, why) of up to `size` rows: the lowest `max_prob` first (half), then a random sample seeded by `seed`."""
    max_prob = np.asarray(max_prob, np.float64)
    size = min(size, len(max_prob))
    n_low = (size + 1) // 2
    lowest = [int(i) for i in np.argsort(max_prob, kind="stable")[:n_low]]
    rest = np.setdiff1d(np.arange(len(max_prob)), lowest)
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:16], 16))
    sample = sorted(int(i) for i in rng.choice(rest, size=min(size - n_low, len(rest)), replace=False))
    return [(i, "lowest confidence") for i in lowest] + [(i, "random sample") for i in sample]


def build_request(
    batch: dict, assessment: dict, max_prob: np.ndarray, class_names: list[str], size: int, at: str
) -> dict:
    """The request for one drifted captured batch.

    `batch`: {"file", "sha256", "request_id", "pred", "version"} (arrays aligned with `max_prob`); `assessment`:
    signals.assess_unlabelled's result (its fired signals become the request's reasons).
    """
    rows = choose(max_prob, size, batch["sha256"])
    pred = np.asarray(batch["pred"]).astype(np.int64)
    versions = sorted({str(v) for v in batch.get("version", [])})
    return {
        "id": f"label-request-{at[:19].replace(':', '').replace('-', '')}-{batch['sha256'][:8]}",
        "created_at": at,
        "batch": batch["file"],
        "batch_sha256": batch["sha256"],
        "model_versions": versions,
        "why": [s for s in assessment["signals"] if s["fired"]],
        "reasons": assessment["reasons"],
        "images": [
            {
                "request_id": str(batch["request_id"][i]),
                "predicted": class_names[pred[i]] if 0 <= pred[i] < len(class_names) else int(pred[i]),
                "max_prob": round(float(max_prob[i]), 4),
                "chosen": why,
            }
            for i, why in rows
        ],
        "class_names": list(class_names),
        "how_to_answer": "mlops label --file labels.csv (columns request_id,label; label = class index or name), "
        "mlops label REQUEST_ID LABEL, or a .csv/.json file dropped into <inbox>/labels/",
    }


def write_request(state_dir: Path, request: dict) -> Path:
    """Write `request` as `<state_dir>/label-requests/<id>.json` (atomically); its path."""
    path = Path(state_dir) / REQUESTS_DIR / f"{request['id']}.json"
    io.write_json(path, request)
    return path


def summary(request: dict, path: Path) -> dict:
    """What the monitor state remembers of a request."""
    return {
        "id": request["id"],
        "file": str(path),
        "batch": request["batch"],
        "images": len(request["images"]),
        "signals": [s["name"] for s in request["why"]],
        "at": request["created_at"],
    }


def request_markdown(requests: list[dict]) -> str:
    """The `labelling-request` artifact: per request, why (signals) and which images (request ids)."""
    lines = ["## Labelling requested", ""]
    for r in requests:
        lines += [
            f"### {r['id']} (batch {r['batch']}, {len(r['images'])} images)",
            "",
            "| signal | value | threshold |",
        ]
        lines += ["|---|---|---|"] + [f"| {s['name']} | {s['value']:.4f} | {s['threshold']:g} |" for s in r["why"]]
        lines += ["", "| request id | predicted | max prob | chosen |", "|---|---|---|---|"]
        lines += [
            f"| {i['request_id']} | {i['predicted']} | {i['max_prob']:.3f} | {i['chosen']} |" for i in r["images"]
        ]
        lines += ["", f"Answer with: {r['how_to_answer']}", ""]
    return "\n".join(lines)
