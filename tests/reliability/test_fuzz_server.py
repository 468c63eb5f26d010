"""Fuzzed /predict bodies: whatever arrives, the model server answers 2xx, or a 4xx whose JSON names the problem.

Hypothesis generates the requests (tests/reliability/fuzz_bodies.py, fuzz_forms.py): JSON of any structure, depth
and types (NaN/Infinity literals, 1e309, out-of-range pixels, wrong shapes), .npy files (wrong dtypes and shapes,
crafted headers, object arrays holding a pickle trip-wire, truncations), images (random bytes, truncated or
bit-flipped PNG/JPEG, valid tiny images of odd sizes and modes, headers claiming huge sizes), multipart forms with
broken framing, odd Content-Types, methods, Content-Lengths, chunkings, disconnects and bodies around the size
limit. Requests certainly valid must get their 200, requests certainly invalid a 4xx. The bulk runs in-process
against the real ASGI app (real TFLite model, real micro-batcher); a smaller share goes over real HTTP to a
`mlops serve` process. After each run, valid requests still get the model's own probabilities.

Example counts come from the Hypothesis profile (tests/conftest.py: "ci" fixed-seed, "dev", "fuzz" for `make fuzz`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings

from pipeline.core.config import DeployConfig
from pipeline.ml.tflite import TFLiteModel, softmax
from tests.helpers_s3 import ROOT, build_tiny_tflite, free_port, sample_images, start_s3_server
from tests.reliability import fuzz_bodies as fb, fuzz_forms as ff
from tests.reliability.common import kill_group, start, subprocess_env, wait_for, write_yaml
from tests.unit.delivery.conftest import CLASSES, LocalSource

LIMIT = 256 * 1024  # deploy.max_body_bytes here: above the 64 KiB inline-parse size, so both paths are fuzzed
HTTP_EXAMPLES = max(10, settings.default.max_examples // 3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A real 8×8×1 → 3-class .tflite (the reliability tier's tiny model)."""
    return build_tiny_tflite(tmp_path_factory.mktemp("fuzz") / "v1.tflite", seed=1)


@pytest.fixture(scope="module")
def app(model):
    """The real app (PredictMiddleware + FastAPI + micro-batcher) serving `model`, no reloader."""
    from pipeline.delivery.api import create_app

    app = create_app(LocalSource({"1": model}), DeployConfig(max_body_bytes=LIMIT), start_reloader=False)
    yield app
    app.state.batcher.close()


# ------------------------------------------------------------------------------------------------ the property


def check_answer(status: int, headers: dict[str, str], body: bytes, req: fb.Request) -> dict:
    """Assert the answer is a 2xx with the predictions or a 4xx with {"error": <a message>}; return its JSON.

    A certainly valid request (`req.images` set) must get a 200 with that many predictions, a certainly invalid one
    (`req.refused`) a 4xx.
    """
    assert 200 <= status < 300 or 400 <= status < 500, f"status {status}: {body[:300]!r}"
    assert req.images is None or status == 200, f"a valid request got {status}: {body[:300]!r}"
    assert not req.refused or status >= 400, f"an invalid request got {status}: {body[:300]!r}"
    assert headers.get("content-type", "").startswith("application/json"), headers
    answer = json.loads(body)
    if status >= 400:
        assert isinstance(answer.get("error"), str) and len(answer["error"]) > 10, answer
        return answer
    probs = np.asarray(answer["probabilities"], dtype=np.float64)
    assert probs.ndim == 2 and probs.shape[1] == len(CLASSES) and np.all(np.isfinite(probs)), answer
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert answer["predictions"] == probs.argmax(axis=1).tolist() and answer["version"] == "1"
    assert answer["labels"] == [CLASSES[i] for i in answer["predictions"]]
    if req.images is not None:
        assert len(answer["predictions"]) == req.images, answer
    return answer


async def _asgi(app, req: fb.Request) -> list[dict]:
    """Send `req` to the ASGI app in `req.chunks` body messages; the messages the app sent back."""
    headers = [(b"content-type", req.content_type)] if req.content_type is not None else []
    if req.content_length is not None:
        headers.append((b"content-length", req.content_length))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": req.method,
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    cuts = [len(req.body) * i // req.chunks for i in range(req.chunks + 1)]
    inbox = [{"type": "http.request", "body": req.body[a:b], "more_body": i < req.chunks - 1}
             for i, (a, b) in enumerate(itertools.pairwise(cuts))]
    if req.disconnect:  # the client goes away before its last chunk
        inbox[-1] = {"type": "http.disconnect"}
    sent: list[dict] = []

    async def receive() -> dict:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)  # an exception escaping here is a crash: the test fails with it
    return sent


def ask(app, req: fb.Request) -> None:
    """One fuzzed request in-process; assert the property (or nothing sent at all when the client went away)."""
    sent = asyncio.run(_asgi(app, req))
    assert not fb.UNPICKLED, "the server unpickled an object array from a request body"
    if req.disconnect and not sent:
        return
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"], sent
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in sent[0]["headers"]}
    check_answer(sent[0]["status"], headers, sent[1]["body"], req)


# ------------------------------------------------------------------------------------------------ in-process


# What the fuzzing found (issue 13), kept as explicit examples: each is tried on every run, whatever the profile.
JSON, NPY = b"application/json", b"application/x-npy"
_HEADER = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }"
FOUND = {
    "json nested 1,100 deep (was 500 RecursionError)": fb.Request(
        b'{"instances": ' + b"[" * 1100 + b"]" * 1100 + b"}", JSON, refused=True),
    "json true among 63 numbers (was 200, read as 1)": fb.Request(
        b'{"instances": [[' + b"1," * 63 + b"true]]}", JSON, refused=True),
    "npy header declaring 8 TiB (was 500 MemoryError)": fb.Request(
        fb.npy_with_header(_HEADER % ("<i8", "(1099511627776,)")), NPY, refused=True),
    "npy uint8 shape of 10^23 (was 500 OverflowError)": fb.Request(
        fb.npy_with_header(_HEADER % ("|u1", "(99999999999999999999999,)")), NPY, refused=True),
    "npy shape (0, 3180, 3180, 9e11) (500 ValueError in the first fix)": fb.Request(
        fb.npy_with_header(_HEADER % ("|u1", "(0, 3180, 3180, 912085364192)")), NPY, refused=True),
    "npy header with an unclosed bracket (was 500 tokenize.TokenError)": fb.Request(
        fb.npy_with_header("{'descr': '<f4', 'shape': ("), NPY, refused=True),
    "npy object array holding a pickle": fb.Request(
        fb.npy_of(np.array([fb.Tripwire()], dtype=object)), NPY, refused=True),
    "GIF sent as image/png (was 200: any format PIL reads)": fb.Request(
        base64.b64decode("R0lGODdhAQABAIEAAF+CwgAAAAAAAAAAACwAAAAAAQABAAAIBAABBAQAOw=="), b"image/png", refused=True),
}


def found(*names: str):
    """@example decorators for the FOUND requests whose names start with one of `names`."""

    def decorate(test):
        for name, req in FOUND.items():
            if name.startswith(names):
                test = example(req=req)(test)
        return test

    return decorate


@found("json")
@given(req=fb.json_requests())
def test_fuzzed_json_bodies_get_a_2xx_or_a_clear_4xx(app, req):
    ask(app, req)


@found("npy")
@given(req=fb.npy_requests())
def test_fuzzed_npy_bodies_get_a_2xx_or_a_clear_4xx_and_are_never_unpickled(app, req):
    ask(app, req)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # headers claiming 10^8+ pixels
@found("GIF")
@given(req=fb.image_requests())
def test_fuzzed_image_bodies_get_a_2xx_or_a_clear_4xx(app, req):
    ask(app, req)


@given(req=ff.multipart_requests())
def test_fuzzed_multipart_bodies_get_a_2xx_or_a_clear_4xx(app, req):
    ask(app, req)


@given(req=ff.transport_requests(LIMIT))
def test_fuzzed_methods_types_lengths_and_chunking_get_a_2xx_or_a_clear_4xx(app, req):
    ask(app, req)


def expected_probabilities(model, x: np.ndarray) -> np.ndarray:
    return softmax(TFLiteModel(model.read_bytes()).predict(x.astype(np.float32)))


def good_requests(x: np.ndarray) -> list[fb.Request]:
    """The same images as JSON, .npy and one PNG each in a multipart form: each must be answered correctly."""
    buf = io.BytesIO()
    np.save(buf, x.astype(np.uint8))
    return [fb.Request(json.dumps({"instances": x.tolist()}).encode(), b"application/json", images=len(x)),
            fb.Request(buf.getvalue(), b"application/x-npy", images=len(x)),
            ff.form_of([fb.png_of(img[..., 0]) for img in x.astype(np.uint8)], len(x))]


def test_after_the_fuzz_the_server_still_answers_valid_requests_correctly(app, model):
    x = sample_images(3, seed=7)
    for req in good_requests(x):
        sent = asyncio.run(_asgi(app, req))
        answer = json.loads(sent[1]["body"])
        assert sent[0]["status"] == 200, answer
        np.testing.assert_allclose(answer["probabilities"], expected_probabilities(model, x), atol=2e-6)


# ------------------------------------------------------------------------------------------------ over real HTTP


@pytest.fixture(scope="module")
def http_server(tmp_path_factory, model):
    """nanio + the model published as v1 + `python -m pipeline.cli serve --source s3` on a free port."""
    from pipeline.delivery import releases

    root = tmp_path_factory.mktemp("fuzz-http")
    endpoint, key, secret, stop_s3 = start_s3_server(root / "s3")
    aws = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true"}
    proc = None
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        for var, value in aws.items():
            mp.setenv(var, value)
        try:
            cfg = DeployConfig(bucket="fuzz", endpoint_url=endpoint, max_body_bytes=LIMIT, reload_seconds=3600)
            releases.publish(cfg, "fuzz-model", "1", model, CLASSES, {"accuracy": 0.9}, {})
            params = write_yaml(root / "params.yaml", {"register": {"model_name": "fuzz-model"},
                                                       "deploy": cfg.model_dump(mode="json")})
            port, log = free_port(), root / "serve.log"
            proc = start([sys.executable, "-m", "pipeline.cli", "serve", "--params", str(params), "--source", "s3",
                          "--host", "127.0.0.1", "--port", str(port)], ROOT, subprocess_env(aws), log)
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _healthy(url), 90, "the model server", interval=0.2, proc=proc, log=log)
            yield {"url": url, "proc": proc, "log": log}
        finally:
            if proc is not None:
                kill_group(proc, sig=15)
            stop_s3()


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def http_client(http_server):
    import httpx

    with httpx.Client(base_url=http_server["url"], timeout=60) as client:
        yield client


@pytest.mark.integration  # a real server process behind nanio (S3)
@settings(max_examples=HTTP_EXAMPLES)
@given(req=ff.http_requests(LIMIT))
def test_fuzzed_bodies_over_real_http_get_a_2xx_or_a_clear_4xx(http_client, req):
    headers = {"content-type": req.content_type} if req.content_type is not None else {}
    resp = http_client.request(req.method, "/predict", content=req.body, headers=headers)
    check_answer(resp.status_code, dict(resp.headers), resp.content, req)


@pytest.mark.integration
def test_after_the_http_fuzz_the_server_process_serves_on_without_a_traceback(http_server, http_client, model):
    x = sample_images(3, seed=11)
    for req in good_requests(x):
        resp = http_client.post("/predict", content=req.body, headers={"content-type": req.content_type})
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["probabilities"], expected_probabilities(model, x), atol=2e-6)
    assert http_server["proc"].poll() is None, "the server process died"
    log = http_server["log"].read_text(errors="replace")
    assert "Traceback" not in log and "/predict failed" not in log, log[-3000:]
