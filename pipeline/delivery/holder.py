"""The served model and its hot reload: one `Served` model at a time, swapped as a whole when the source changes.

`ModelHolder.check()` asks the source for its `current_version()` and, when it changed, loads and smoke-tests
the new model and swaps one reference: requests in flight finish on the model they started with, none fail,
and a broken new model is never swapped in (the old one keeps serving). `Reloader` calls it every
`reload_seconds` in the background.

TFLite interpreters are not thread-safe, so each loaded model carries a pool of interpreters (one per inference
thread, `deploy.serve_threads`); a call borrows one for its duration.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import StageError
from pipeline.ml.tflite import TFLiteModel, softmax

log = logging.getLogger(__name__)


@dataclass
class Served:
    """One loaded model. Immutable once built; replaced as a whole on reload."""

    model: TFLiteModel
    manifest: dict
    interpreters: int = 1
    loaded_at: float = field(default_factory=time.time)
    _pool: queue.SimpleQueue[TFLiteModel] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """One single-threaded interpreter per inference thread (the loaded model itself is kept for its shape)."""
        self._pool = queue.SimpleQueue()
        for _ in range(self.interpreters):
            self._pool.put(self.model.clone(num_threads=1))

    @property
    def version(self) -> str:
        """The served version, as text."""
        return str(self.manifest.get("version"))

    @property
    def class_names(self) -> list[str]:
        """Class names in output order."""
        return list(self.manifest.get("class_names") or [])

    def probabilities(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Softmax class probabilities for a (N, *input_shape) batch, in interpreter calls of <= `batch_size`."""
        interpreter = self._pool.get()  # blocks only when every interpreter is busy
        try:
            logits = interpreter.predict(x, batch_size)
        finally:
            self._pool.put(interpreter)
        return softmax(logits)


def build_served(source, interpreters: int = 1) -> Served:
    """Load from the source and smoke-test before anything may serve it."""
    model, manifest = source.load()
    served = Served(model, dict(manifest), interpreters)
    shape = tuple(model.input_shape)
    if manifest.get("input_shape") is not None and tuple(manifest["input_shape"]) != shape:
        raise StageError(f"v{served.version}: manifest input_shape {manifest['input_shape']} != model's {list(shape)}")
    probs = served.probabilities(np.full((1, *shape), 127.0, np.float32))
    if served.class_names and probs.shape[1] != len(served.class_names):
        raise StageError(
            f"v{served.version}: the model has {probs.shape[1]} outputs but {len(served.class_names)} class names"
        )
    if not served.class_names:
        served.manifest["class_names"] = [str(i) for i in range(probs.shape[1])]
    if not np.all(np.isfinite(probs)):
        raise StageError(f"v{served.version}: the model returns non-finite outputs")
    return served


class ModelHolder:
    """Holds the Served model; `check()` swaps in a new one when the source's version changed."""

    def __init__(
        self,
        source,
        interpreters: int = 1,
        on_swap: Callable[[Served | None, Served], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ):
        """Load the source's current model now; `on_swap(old, new)` / `on_failure(error)` hear of each reload."""
        self.source, self.interpreters = source, interpreters
        self.on_swap, self.on_failure = on_swap, on_failure
        self.current: Served = build_served(source, interpreters)
        if on_swap:
            on_swap(None, self.current)
        self._reload_lock = threading.Lock()  # one reload at a time (poller vs POST /reload)
        self.last_check: float | None = None
        self.last_error: str | None = None

    def check(self, force: bool = False) -> dict:
        """Reload when the source names another version (or `force`); the old model serves on if that fails."""
        with self._reload_lock:
            before = self.current.version
            try:
                latest = str(self.source.current_version())
                self.last_check = time.time()
                if latest == before and not force:
                    self.last_error = None
                    return {"reloaded": False, "version": before}
                new = build_served(self.source, self.interpreters)
            except Exception as exc:  # keep serving the old model, report why (re-raised)
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("reload check failed; still serving v%s: %s", before, self.last_error)
                if self.on_failure:
                    self.on_failure(self.last_error)
                raise
            old, self.current = self.current, new  # the swap: a single reference assignment
            self.last_error = None
            if self.on_swap:
                self.on_swap(old, new)
            if new.version != before:
                log.info("now serving v%s (was v%s)", new.version, before)
            return {"reloaded": new.version != before, "version": new.version, "previous_version": before}


class Reloader(threading.Thread):
    """Daemon thread calling `holder.check()` every `every` seconds until `stop` is set."""

    def __init__(self, holder: ModelHolder, every: float, after_reload: Callable[[], object] | None = None):
        """Poll `holder` every `every` seconds; `after_reload()` runs after each swap it made (e.g. tell peers)."""
        super().__init__(name="model-reloader", daemon=True)
        self.holder, self.every, self.stop = holder, every, threading.Event()
        self.after_reload = after_reload

    def run(self) -> None:
        """Poll until stopped; a failed check is logged by check() and retried next period."""
        while not self.stop.wait(self.every):
            with contextlib.suppress(Exception):  # logged in check(); retry next period
                if self.holder.check()["reloaded"] and self.after_reload:
                    self.after_reload()
