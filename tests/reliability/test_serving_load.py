"""Serving under load: the real `mlops serve --source s3` process against nanio with a tiny published model.

Once with one server process, once with two worker processes (`--workers 2`: POST /reload must reach both; half
the requests). 32 concurrent keep-alive clients send 10,000 requests (set RELIABILITY_LOAD_REQUESTS to change it); one in 25 is
malformed (wrong shape, strings, booleans, NaN, non-JSON, a missing field, a body over deploy.max_body_bytes) and must
get its 4xx while the good ones keep succeeding. Halfway through, v2 is published and POST /reload swaps it in:
no request fails, and every request sent after the reload answered is served by v2. p50/p99 latency of the good
requests go to `record_property` and the terminal summary.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time

import numpy as np
import pytest

from tests.helpers_s3 import ROOT, free_port, sample_images, start_s3_server
from tests.reliability.common import kill_group, start, subprocess_env, wait_for, write_yaml

pytestmark = [pytest.mark.integration]

TOTAL = int(os.environ.get("RELIABILITY_LOAD_REQUESTS", "10000"))
CLIENTS = 32
MALFORMED_EVERY = 25
MAX_BODY = 4096
NAME = "load-model"
CLASSES = ["cat", "dog", "bird"]


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


# (kind, body, expected status); the bodies are built once, the load generator only sends bytes
MALFORMED = [
    ("wrong-shape", _json({"instances": np.zeros((1, 4, 4, 1)).tolist()}), 400),
    ("strings", _json({"instances": [[["x"]] * 8] * 8}), 400),
    ("booleans", _json({"instances": np.ones((1, 8, 8, 1), bool).tolist()}), 400),
    ("nan", _json({"instances": np.zeros((1, 8, 8, 1)).tolist()}).replace(b"0.0", b"NaN", 1), 400),
    ("non-json", b"{this is not json", 400),
    ("missing-field", _json({"images": [1, 2, 3]}), 422),
    ("oversized", _json({"instances": np.full((12, 8, 8, 1), 100.125).tolist()}), 413),
]
GOOD = [_json({"instances": sample_images(1, seed=s).tolist()}) for s in range(16)]


def _plan(total: int) -> list[tuple[str, bytes, int]]:
    bad = itertools.cycle(MALFORMED)
    good = itertools.cycle(GOOD)
    return [next(bad) if i % MALFORMED_EVERY == MALFORMED_EVERY - 1 else ("good", next(good), 200)
            for i in range(total)]


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def server(request, tmp_path_factory, template):
    """nanio + v1 published + `python -m pipeline.cli serve --source s3 --workers N` on a free port."""
    from pipeline.delivery import releases as deploy
    from pipeline.core.config import DeployConfig

    root = tmp_path_factory.mktemp("load")
    endpoint, key, secret, stop_s3 = start_s3_server(root / "s3")
    aws = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
           "AWS_EC2_METADATA_DISABLED": "true"}
    proc = None
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        for var, value in aws.items():
            mp.setenv(var, value)
        try:
            cfg = DeployConfig(bucket="load-test", prefix="models", endpoint_url=endpoint, max_body_bytes=MAX_BODY,
                               reload_seconds=3600)  # only POST /reload swaps models in this test
            deploy.publish(cfg, NAME, "1", template / "v1.tflite", CLASSES, {"accuracy": 0.9}, {})
            params = write_yaml(root / "params.yaml", {"register": {"model_name": NAME},
                                                       "deploy": cfg.model_dump(mode="json")})
            port = free_port()
            log = root / "serve.log"
            proc = start([sys.executable, "-m", "pipeline.cli", "serve", "--params", str(params), "--source", "s3",
                          "--host", "127.0.0.1", "--port", str(port), "--workers", str(request.param)],
                         ROOT, subprocess_env(aws), log)
            url = f"http://127.0.0.1:{port}"

            def healthy():
                import httpx

                try:
                    return httpx.get(url + "/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(healthy, 90, "the model server", interval=0.2, proc=proc, log=log)
            yield {"url": url, "cfg": cfg, "log": log, "secret": secret, "workers": request.param,
                   "publish_v2": lambda: deploy.publish(cfg, NAME, "2", template / "v2.tflite", CLASSES, {}, {})}
        finally:
            if proc is not None:
                kill_group(proc, sig=15)
            stop_s3()


async def _drive(url: str, plan: list, change_champion) -> tuple[list, dict]:
    """Send `plan` with CLIENTS concurrent clients; at the halfway request, publish v2 and POST /reload."""
    import httpx

    results: list = [None] * len(plan)
    reload: dict = {}
    counter = itertools.count()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            while (i := next(counter)) < len(plan):
                if i == len(plan) // 2:  # the champion changes while the other clients keep sending
                    reload["started"] = time.perf_counter()
                    await asyncio.to_thread(change_champion)
                    resp = await client.post("/reload")
                    reload.update(status=resp.status_code, body=resp.json(), done=time.perf_counter())
                kind, body, _ = plan[i]
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/predict", content=body, headers={"content-type": "application/json"})
                    status = resp.status_code
                    answer = resp.json()
                    version = answer.get("version") if status == 200 else None
                    ok_body = (len(answer.get("predictions", [])) == 1) if status == 200 else bool(answer.get("error"))
                except Exception as exc:  # noqa: BLE001 - counted as an error
                    status, version, ok_body = f"{type(exc).__name__}: {exc}", None, False
                results[i] = (kind, t0, time.perf_counter(), status, version, ok_body)

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return results, reload


def test_load_with_malformed_requests_and_a_champion_change(server, tally, record_property):
    import httpx

    plan = _plan(TOTAL if server["workers"] == 1 else TOTAL // 2)
    started = time.perf_counter()
    results, reload = asyncio.run(_drive(server["url"], plan, server["publish_v2"]))
    wall = time.perf_counter() - started

    errors = [(i, r) for i, (r, (_, _, expected)) in enumerate(zip(results, plan))
              if r is None or r[3] != expected or not r[5]]
    good = [r for r in results if r and r[0] == "good"]
    malformed = [r for r in results if r and r[0] != "good" and r[3] in (400, 413, 422)]
    latencies = np.array([end - begin for _, begin, end, status, *_ in good if status == 200]) * 1000
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99)) if len(latencies) else (float("nan"),) * 2
    versions = sorted({r[4] for r in good if r[4]})
    figures = {"requests_sent": len(plan), "requests_served": len(plan) - len(errors), "request_errors": len(errors),
               "malformed_rejected": len(malformed), "load_seconds": round(wall, 1),
               "requests_per_second": round(len(plan) / wall, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
               "versions_seen": ",".join(versions)}
    for key, value in figures.items():
        record_property(key, value)
        if server["workers"] == 1:  # the summary's figures are the single-process run's
            tally[key] = value
    print(json.dumps(figures))

    assert not errors, f"{len(errors)} requests failed, first: {errors[:5]}"
    assert len(malformed) == len(plan) // MALFORMED_EVERY
    assert reload.get("status") == 200, reload
    workers = reload["body"].pop("workers", {})  # several worker processes: POST /reload reloaded every one
    assert reload["body"] == {"reloaded": True, "version": "2", "previous_version": "1"}, reload
    if server["workers"] > 1:
        assert len(workers) == server["workers"] and all(w == {"version": "2", "error": None}
                                                         for w in workers.values()), workers
    # no request lost in the swap; everything sent after the reload answered is served by v2
    after = [r for r in good if r[1] > reload["done"]]
    before = [r for r in good if r[2] < reload["started"]]
    assert after and all(r[4] == "2" for r in after), sorted({r[4] for r in after})
    assert before and all(r[4] == "1" for r in before)
    assert versions == ["1", "2"]
    health = httpx.get(server["url"] + "/health", timeout=10).json()
    assert health["version"] == "2" and health["last_reload_error"] is None
    # /metrics counts every answered request, whichever worker process answered it
    metrics = httpx.get(server["url"] + "/metrics", timeout=10).text
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("mlops_serve_requests_total{") and 'route="/predict"' in line)
    assert counted == len(plan), (counted, len(plan))
    assert 'mlops_serve_model_version{model_name="load-model",version="2"} 1.0' in metrics
    assert server["secret"] not in server["log"].read_text(errors="replace")
