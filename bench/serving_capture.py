"""Serving with capture on vs off (`mlops serve` vs `mlops serve --no-capture`) under `hey`, and the capture's
storage per 1,000 requests.

    python bench/serving_capture.py [--workspace <project with a champion>] [--runs 3] [--seconds 10]

Self-contained: a local nanio S3 server holds the release (`mlops deploy`'s layout) and the capture inbox. The
model is the workspace's deployed variant and its test images when `--workspace` is given, else a tiny
28×28×1 → 10 model (Flatten + Dense) with random images (they compress worse than real ones). Each run starts a
fresh server per mode, alternating off/on, and puts 32 clients of single-image .npy requests on it for `--seconds`;
capture settings are params.yaml's `capture:` section (`--sample-rate` overrides the rate). Reports, per mode, the
min and median over runs of p50, p99 and req/s, the on/off ratios of those medians, and bytes of capture files
written (listed in S3 after a clean shutdown flushed everything) ÷ requests answered × 1,000 — hey sends one body,
so those files hold one image repeated, which compresses far better than real traffic: the figure for distinct
images is estimated too, from `encode_batch` of `batch_images` distinct images × sample_rate × 1,000. Saved as the
`serving_capture` section.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from common import ROOT, free_port, save, tool_env
from serving import _hey, _wait
from tests.helpers_s3 import build_tiny_tflite, start_s3_server

NAME, BUCKET, INBOX = "bench-capture", "models-bench", "inbox-bench"
MODES = ("off", "on")


def _model(workspace: Path | None, tmp: Path) -> tuple[Path, np.ndarray]:
    """(.tflite, uint8 NHWC images): the workspace's deploy variant and test split, else a tiny random model."""
    if workspace is None:
        x = np.random.default_rng(0).integers(0, 256, (256, 28, 28, 1), dtype=np.uint8)
        return build_tiny_tflite(tmp / "tiny.tflite", seed=1, shape=(28, 28, 1), classes=10), x
    from common import paths_of
    from pipeline.core import io as project_io

    paths = paths_of(workspace)
    variant = json.loads(paths["evaluate_metrics"].read_text())["deploy_variant"]
    return paths["compressed"] / f"{variant}.tflite", project_io.read_split(paths["prepared"], "test")[0]


def _params(tmp: Path, run: str, capture: dict) -> Path:
    """A params.yaml serving the release from nanio and capturing into s3://INBOX/<run>/captured/."""
    text = (
        f"register:\n  model_name: {NAME}\ndeploy:\n  bucket: {BUCKET}\n  prefix: m\n"
        f"monitor:\n  inbox: s3://{INBOX}/{run}\ncapture:\n"
        + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in capture.items())
    )
    path = tmp / f"params-{run}.yaml"
    path.write_text(text)
    return path


def _stored_bytes(s3, run: str) -> int:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=INBOX, Prefix=f"{run}/")
    return sum(obj["Size"] for page in pages for obj in page.get("Contents", []))


def _one(tmp: Path, body: Path, run: str, mode: str, capture: dict, seconds: int, s3) -> dict:
    """One server in `mode`, loaded for `seconds`, then stopped cleanly (the capture flushes)."""
    port = free_port()
    cmd = ["mlops", "serve", "--params", str(_params(tmp, run, capture)), "--source", "s3", "--port", str(port)]
    with open(tmp / f"serve-{run}.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd + (["--no-capture"] if mode == "off" else []), cwd=tmp, env=tool_env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc)
        row = _hey(f"http://127.0.0.1:{port}/predict", body, "application/x-npy", 32, seconds)
    finally:
        proc.terminate()  # SIGTERM: uvicorn's clean shutdown, the capture flushes
        proc.wait(60)
    stored = _stored_bytes(s3, run)
    return {"mode": mode, **row, "capture_bytes": stored}


def _summary(rows: list[dict]) -> dict:
    """Per mode: min and median of p50/p99/req/s; on÷off ratios of the medians; capture bytes per 1,000 requests."""
    out: dict = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        out[mode] = {
            key: {"min": min(r[key] for r in mine), "median": statistics.median(r[key] for r in mine)}
            for key in ("p50_ms", "p99_ms", "requests_per_second")
        }
    out["ratio_on_over_off_median"] = {
        key: round(out["on"][key]["median"] / out["off"][key]["median"], 3) for key in out["on"]
    }
    on = [r for r in rows if r["mode"] == "on"]
    stored, answered = sum(r["capture_bytes"] for r in on), sum(r["ok"] for r in on)
    out["capture_bytes_per_1000_requests"] = round(stored / answered * 1000, 1)
    return out


def _distinct_per_1000(x: np.ndarray, capture: dict) -> float:
    """Bytes per 1,000 requests when every captured image differs: one full file of distinct images, scaled."""
    from pipeline.delivery.capture import Record, encode_batch

    n = min(len(x), capture["batch_images"])
    probs = np.full((n, 10), 0.1, np.float32)
    data = encode_batch([Record(f"{i:032x}", "1", x[i : i + 1], probs[i : i + 1]) for i in range(n)])
    return round(len(data) / n * capture["sample_rate"] * 1000, 1)


def main() -> None:
    """Measure, print and save the serving_capture section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=None, help="project with a trained model (default: tiny)")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (alternating off, on)")
    parser.add_argument("--seconds", type=int, default=10, help="load per run")
    parser.add_argument("--sample-rate", type=float, default=None, help="capture.sample_rate (default: params.yaml)")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("needs `hey` (Debian package hey): apt-get install hey")
    from pipeline.core.config import DeployConfig, load_params
    from pipeline.delivery import releases, s3 as s3io

    tmp = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    capture = load_params(ROOT / "params.yaml").capture.model_dump() | {"enabled": True}
    if args.sample_rate is not None:
        capture["sample_rate"] = args.sample_rate
    endpoint, key, secret, stop = start_s3_server(tmp / "s3")
    os.environ.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_ENDPOINT_URL=endpoint,
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    try:
        tflite, x = _model(args.workspace.resolve() if args.workspace else None, tmp)
        cfg = DeployConfig(bucket=BUCKET, prefix="m")
        from pipeline.ml.tflite import TFLiteModel

        classes = TFLiteModel(tflite).predict(x[:1].astype(np.float32), 1).shape[1]
        releases.publish(cfg, NAME, "1", tflite, [str(i) for i in range(classes)], {}, {})
        s3 = s3io.s3_client(cfg)
        s3.create_bucket(Bucket=INBOX)
        buf = io.BytesIO()
        np.save(buf, x[:1])
        (body := tmp / "x1.npy").write_bytes(buf.getvalue())
        rows = []
        for i in range(args.runs):
            for mode in MODES:
                rows.append({"run": i, **_one(tmp, body, f"{mode}-{i}", mode, capture, args.seconds, s3)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        stop()
    figures = {
        "command": f"python bench/serving_capture.py --runs {args.runs} --seconds {args.seconds}"
        + (" --workspace <project>" if args.workspace else ""),
        "model": "workspace deploy variant" if args.workspace else "tiny 28x28x1 -> 10 (random weights and images)",
        "load": "32 clients, single-image .npy requests",
        "capture": capture,
        "runs": rows,
        **_summary(rows),
        "capture_bytes_per_1000_requests_distinct_images": _distinct_per_1000(x, capture),
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=1))
    save("serving_capture", figures)


if __name__ == "__main__":
    main()
