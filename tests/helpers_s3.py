"""Test helpers for S3 deployment: a real local nanio server, and a tiny real .tflite without training.

    endpoint, access_key, secret, stop = start_s3_server(tmp_dir)
    ...
    stop()

nanio enforces SigV4, so a client with the wrong secret really gets SignatureDoesNotMatch.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.helpers_project import stop_group

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _nanio_bin() -> str:
    here = Path(sys.executable).with_name("nanio")
    return str(here if here.exists() else ROOT / ".venv" / "bin" / "nanio")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except urllib.error.HTTPError:  # 403 for an unsigned request: the server is up
        return True
    except OSError:
        return False


def start_s3_server(tmp_dir: str | Path, timeout: float = 30.0) -> tuple[str, str, str, Callable[[], None]]:
    """Start nanio on a free port with fresh random credentials; return (endpoint, access_key, secret, stop).

    Data and log go under tmp_dir. The server runs in its own process group; stop() ends exactly that group
    (idempotent). Raises RuntimeError with the log tail when it does not come up within `timeout` seconds.
    """
    tmp_dir = Path(tmp_dir)
    (tmp_dir / "s3-data").mkdir(parents=True, exist_ok=True)
    access_key = "TEST" + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    last_error = ""
    for _attempt in range(3):  # the free port can be taken between picking and binding: retry
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        log_path = tmp_dir / f"nanio-{port}.log"
        env = {**os.environ, "NANIO_ACCESS_KEY": access_key, "NANIO_SECRET_KEY": secret}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [_nanio_bin(), "serve", "--data-dir", str(tmp_dir / "s3-data"), "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning", "--no-access-log"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)

        def stop(proc=proc) -> None:
            stop_group(proc, signal.SIGTERM, grace=10)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(endpoint + "/"):
                return endpoint, access_key, secret, stop
            time.sleep(0.1)
        stop()
        last_error = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"nanio did not start; last log:\n{last_error}")


def build_tiny_tflite(path: str | Path, seed: int = 0, shape: tuple[int, int, int] = (8, 8, 1),
                      classes: int = 3) -> Path:
    """A real fp32 .tflite (Input shape → Flatten → Dense classes) with seeded random weights; no training.

    Uses the project's own export (pipeline.ml.conversion.export_saved_model + convert). Different seeds give
    different bytes (and predictions).
    """
    import keras

    from pipeline.ml.conversion import convert, export_saved_model

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                              keras.layers.Dense(classes, kernel_initializer=keras.initializers.RandomNormal(
                                  stddev=0.05, seed=seed))])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as saved:
        export_saved_model(model, Path(saved))
        path.write_bytes(convert(Path(saved), "fp32"))
    return path


def sample_images(n: int, shape: tuple[int, int, int] = (8, 8, 1), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape)).astype(np.float32)
