"""Serving benchmark: `mlops serve` on a workspace's champion under `hey` (Debian's Go load generator), against the
raw TFLite interpreter rate of the same .tflite measured in the same run.

    python bench/serving.py --workspace <project with a champion> [--seconds 10] [--workers N] [--threads N]

Single-image requests at 1, 8, 32 and 128 concurrent clients for each body kind (JSON, .npy, PNG); then 32 clients
with 32 images per request (JSON and .npy). Reports req/s, images/s, p50/p99 latency and failed requests (hey's
own summary, parsed), and the raw interpreter images/s at batch 1 and batch 32. Issue 12's targets (2 cores, load
generator included): (a) 32 clients single-image >= 2,000 req/s with p99 <= 50 ms, reported for each body kind,
the verdict on the best binary body (.npy or PNG, whichever has the higher req/s among those meeting p99, else the
higher req/s); (b) 32-image binary (.npy) requests >= 50 % of the raw batch-32 images/s.

Capture on vs off (and its storage per 1,000 requests) is bench/serving_capture.py.

The "before" key holds the old JSON-only server (commit 42aaad6) on the same workspace: `--before FILE` takes it
from the "serving" section FILE's old bench/serving.py wrote (run it from a checkout of 42aaad6 on this machine,
just before this run, so both sides share the machine); without it, the previous section's "before" is carried.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import RESULTS, free_port, paths_of, save, tool_env

CLIENTS = (1, 8, 32, 128)
BODIES = {  # kind: (Content-Type, file suffix)
    "JSON": ("application/json", "json"),
    "npy": ("application/x-npy", "npy"),
    "PNG": ("image/png", "png"),
}
BINARY = ("npy", "PNG")
BEFORE_COMMIT = "42aaad6"


def _raw_rate(tflite: Path, x: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    """Images/s of the interpreter alone on `batch`-image calls, for about `seconds`."""
    from pipeline.ml.tflite import TFLiteModel

    model = TFLiteModel(tflite)
    chunk = x[:batch].astype(np.float32)
    model.predict(chunk, batch)  # warm
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict(chunk, batch)
        done += len(chunk)
    return done / (time.perf_counter() - started)


def _write_bodies(x: np.ndarray, tmp: Path) -> dict[tuple[str, int], Path]:
    """Request bodies: (kind, images per request) → file. x: uint8 (N, H, W, C) test images."""
    from PIL import Image

    bodies = {}
    for n in (1, 32):
        bodies["JSON", n] = tmp / f"x{n}.json"
        bodies["JSON", n].write_text(json.dumps({"instances": x[:n].tolist()}))
        buf = io.BytesIO()
        np.save(buf, x[:n])
        bodies["npy", n] = tmp / f"x{n}.npy"
        bodies["npy", n].write_bytes(buf.getvalue())
    image = x[0, ..., 0] if x.shape[-1] == 1 else x[0]
    bodies["PNG", 1] = tmp / "x1.png"
    Image.fromarray(image).save(bodies["PNG", 1], "PNG")
    return bodies


def _hey(url: str, body: Path, content_type: str, clients: int, seconds: int) -> dict:
    """One `hey` run; its summary parsed into req/s, p50/p99 ms and the status-code counts."""
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-T", content_type, "-D", str(body), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pct = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    # "Error distribution:" lines ("  [5]\tPost ...: connection refused") carry a count, like the status lines
    failures = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+(?!\d)", out, re.M))
    errors = sum(n for c, n in codes.items() if c != 200) + failures
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": round(pct.get(50, float("nan")), 2),
        "p99_ms": round(pct.get(99, float("nan")), 2),
        "ok": codes.get(200, 0),
        "errors": errors,
    }


def _wait(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlops serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200 and json.loads(reply.read()).get("version"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("mlops serve did not become healthy")


def _plan() -> list[tuple[str, int, int]]:
    """(body kind, images per request, clients) of every load level, in order."""
    return [(kind, 1, c) for kind in BODIES for c in CLIENTS] + [("JSON", 32, 32), ("npy", 32, 32)]


def _serve_cmd(port: int, args: argparse.Namespace) -> list[str]:
    cmd = ["mlops", "serve", "--source", "registry", "--alias", args.alias, "--port", str(port)]
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def _measure(workspace: Path, bodies: dict, args: argparse.Namespace) -> list[dict]:
    """Start `mlops serve` in the workspace and run every load level against it."""
    port = free_port()
    log_path = bodies["JSON", 1].parent / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            _serve_cmd(port, args),
            cwd=workspace,
            env=tool_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc)
        url = f"http://127.0.0.1:{port}/predict"
        rows = []
        for kind, n, clients in _plan():
            figures = _hey(url, bodies[kind, n], BODIES[kind][0], clients, args.seconds)
            rows.append({"body": kind, "clients": clients, "images_per_request": n, **figures})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    for row in rows:
        row["images_per_second"] = round(row["requests_per_second"] * row["images_per_request"], 1)
    return rows


def _targets(rows: list[dict], raw: dict) -> dict:
    """Issue 12's two targets: (a) per body kind and the verdict on the best binary body; (b) .npy 32-image share."""

    def level(kind: str, n: int) -> dict:
        return next(r for r in rows if r["body"] == kind and r["clients"] == 32 and r["images_per_request"] == n)

    single = {
        kind: {
            "requests_per_second": level(kind, 1)["requests_per_second"],
            "p99_ms": level(kind, 1)["p99_ms"],
            "met": level(kind, 1)["requests_per_second"] >= 2000 and level(kind, 1)["p99_ms"] <= 50,
        }
        for kind in BODIES
    }
    best = max(BINARY, key=lambda k: (single[k]["p99_ms"] <= 50, single[k]["requests_per_second"]))
    batch = level("npy", 32)
    return {
        "target_single_32_clients": {**single[best], "body": best, "by_body": single},
        "target_batch32_share_of_raw": {
            "body": "npy",
            "images_per_second": batch["images_per_second"],
            "share": round(batch["images_per_second"] / raw["batch32"], 4),
            "met": batch["images_per_second"] >= 0.5 * raw["batch32"],
            "json_share": round(level("JSON", 32)["images_per_second"] / raw["batch32"], 4),
        },
    }


def _before(measured: Path | None) -> dict | None:
    """The 'before' figures: the old server's section in `measured`, else the one results.json already carries."""
    if measured is not None:
        old = json.loads(measured.read_text()).get("serving")
        if not isinstance(old, dict) or "before" in old:
            raise SystemExit(f"{measured}: no 'serving' section written by the old (42aaad6) bench/serving.py")
        return {"server": f"JSON-only server before issue 12 (commit {BEFORE_COMMIT})", **old}
    old = json.loads(RESULTS.read_text()).get("serving") if RESULTS.is_file() else None
    if not isinstance(old, dict):
        return None
    if "before" in old:
        return old["before"]
    return {"server": f"JSON-only server before issue 12 (commit {BEFORE_COMMIT})", **old}


def main() -> None:
    """Measure, print and save the serving section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="project root after `make run`")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each load level")
    parser.add_argument(
        "--alias", default="champion", help="registry alias to serve (challenger: a fresh `make run` has no champion)"
    )
    parser.add_argument("--workers", type=int, default=None, help="mlops serve --workers (default: params.yaml)")
    parser.add_argument("--threads", type=int, default=None, help="mlops serve --threads (default: params.yaml)")
    parser.add_argument("--before", type=Path, default=None, help="results.json of the old server's run (see above)")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("needs `hey` (Debian package hey): apt-get install hey")
    from pipeline.core import io as project_io
    from pipeline.core.config import load_params

    workspace = args.workspace.resolve()
    paths = paths_of(workspace)
    x, _ = project_io.read_split(paths["prepared"], "test")
    variant = json.loads((paths["evaluate_metrics"]).read_text())["deploy_variant"]
    tflite = paths["compressed"] / f"{variant}.tflite"
    raw = {"batch1": _raw_rate(tflite, x, 1), "batch32": _raw_rate(tflite, x, 32)}
    deploy = load_params(workspace / "params.yaml").deploy
    server = {
        "serve_workers": args.workers or deploy.serve_workers,
        "serve_threads": args.threads or deploy.serve_threads,
        "batch_max_images": deploy.batch_max_images,
        "batch_max_wait_ms": deploy.batch_max_wait_ms,
    }
    before = _before(args.before)
    rows = _measure(workspace, _write_bodies(x, Path(tempfile.mkdtemp(prefix="bench-serving-"))), args)
    options = "".join(
        f" --{k} {v}" for k, v in (("alias", args.alias), ("workers", args.workers), ("threads", args.threads)) if v
    )
    figures = {
        "command": f"python bench/serving.py --workspace <project> --seconds {args.seconds}{options}",
        "variant": variant,
        "alias": args.alias,
        "body": "JSON, npy, PNG",
        "server": server,
        "raw_interpreter_images_per_second": {k: round(v, 1) for k, v in raw.items()},
        "levels": rows,
        **_targets(rows, raw),
    }
    save("serving", {**figures, "before": before} if before else figures)


if __name__ == "__main__":
    main()
