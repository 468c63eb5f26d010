"""Serving benchmark: `mlops serve` on a workspace's champion under `hey` (Debian's Go load generator), against the
raw TFLite interpreter rate of the same .tflite measured in the same run.

    python bench/serving.py --workspace <project with a champion> [--seconds 10]

For 1, 8, 32 and 128 concurrent clients: single-image JSON requests; then 32 clients with 32 images per JSON
request. Reports req/s, images/s, p50/p99 latency and non-200 answers (hey's own summary, parsed), and the raw
interpreter images/s at batch 1 and batch 32. Issue 12's targets (2 cores, load generator included): at 32
clients single-image >= 2,000 req/s with p99 <= 50 ms; 32-image requests >= 50 % of the raw batch-32 rate.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import free_port, paths_of, save, tool_env

CLIENTS = (1, 8, 32, 128)


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


def _hey(url: str, body: Path, clients: int, seconds: int) -> dict:
    """One `hey` run; its summary parsed into req/s, p50/p99 ms and the status-code counts."""
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-T", "application/json", "-D", str(body), url],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="project root whose registry has a champion")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each load level")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("needs `hey` (Debian package hey): apt-get install hey")
    from pipeline.core import io

    workspace = args.workspace.resolve()
    paths = paths_of(workspace)
    x, _ = io.read_split(paths["prepared"], "test")
    variant = json.loads((paths["evaluate_metrics"]).read_text())["deploy_variant"]
    tflite = paths["compressed"] / f"{variant}.tflite"
    raw = {"batch1": _raw_rate(tflite, x, 1), "batch32": _raw_rate(tflite, x, 32)}

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    one, many = tmp / "one.json", tmp / "many.json"
    one.write_text(json.dumps({"instances": x[:1].tolist()}))
    many.write_text(json.dumps({"instances": x[:32].tolist()}))
    port = free_port()
    with open(tmp / "serve.log", "w") as log:
        proc = subprocess.Popen(
            ["mlops", "serve", "--source", "registry", "--port", str(port)],
            cwd=workspace,
            env=tool_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc)
        url = f"http://127.0.0.1:{port}/predict"
        rows = [{"clients": c, "images_per_request": 1, **_hey(url, one, c, args.seconds)} for c in CLIENTS]
        rows.append({"clients": 32, "images_per_request": 32, **_hey(url, many, 32, args.seconds)})
    finally:
        proc.terminate()
        proc.wait(30)
    for row in rows:
        row["images_per_second"] = round(row["requests_per_second"] * row["images_per_request"], 1)
    single32 = next(r for r in rows if r["clients"] == 32 and r["images_per_request"] == 1)
    batch32 = rows[-1]
    save(
        "serving",
        {
            "command": f"python bench/serving.py --workspace <project> --seconds {args.seconds}",
            "variant": variant,
            "body": "JSON",
            "raw_interpreter_images_per_second": {k: round(v, 1) for k, v in raw.items()},
            "levels": rows,
            "target_single_32_clients": {
                "requests_per_second": single32["requests_per_second"],
                "p99_ms": single32["p99_ms"],
                "met": single32["requests_per_second"] >= 2000 and single32["p99_ms"] <= 50,
            },
            "target_batch32_share_of_raw": {
                "share": round(batch32["images_per_second"] / raw["batch32"], 4),
                "met": batch32["images_per_second"] >= 0.5 * raw["batch32"],
            },
        },
    )


if __name__ == "__main__":
    main()
