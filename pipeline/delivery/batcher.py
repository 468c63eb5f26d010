"""Dynamic micro-batching: concurrent /predict requests share one interpreter call, each gets its own rows back.

`MicroBatcher.submit(served, x)` queues a request's validated (n, H, W, C) batch and returns a
`concurrent.futures.Future` of its (n, K) probabilities (an async handler awaits it with `asyncio.wrap_future`, so
the batcher works under any event loop). `threads` inference threads each loop: wait for a first request; wait up
to `max_wait_ms` after its arrival for more, but only while other requests are on their way (announced with
`arriving()`, not yet submitted or abandoned: a lone client never waits) and fewer than `max_images` images are
queued; take queued requests in arrival order while they fit in `max_images` images and are pinned to the same
`Served` model as the first; run them as one call on one of that model's interpreters (`invoke` releases the GIL,
so the threads' calls run in parallel); hand each request its slice. A request larger than
`max_images` runs alone, in interpreter calls of at most `max_images`. A failing call fails only the requests in
that batch, with `BatchFailed`; requests are validated before they are queued, so one request's bad input never
reaches a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from pipeline.delivery.holder import Served

log = logging.getLogger(__name__)


class BatchFailed(RuntimeError):
    """The interpreter call of a micro-batch failed; every request in that batch gets this error."""


@dataclass
class _Request:
    served: Served
    x: np.ndarray
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Gathers queued requests into interpreter calls of at most `max_images`, on `threads` inference threads."""

    def __init__(
        self,
        max_images: int,
        max_wait_ms: float,
        threads: int,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        """Start the inference threads; `on_batch(images, requests)` hears of every interpreter call."""
        self.max_images, self.max_wait, self.on_batch = max_images, max_wait_ms / 1000, on_batch
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._arriving = 0  # requests announced by arriving() and neither submitted nor abandoned yet
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"inference-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def arriving(self) -> None:
        """A request has arrived and will be `submit`ted (or `abandon`ed): a batch may wait for it."""
        with self._cond:
            self._arriving += 1

    def abandon(self) -> None:
        """A request announced by `arriving` will not be submitted (bad input, client gone)."""
        with self._cond:
            self._arriving -= 1
            if not self._arriving and self._queue:
                self._cond.notify()

    def submit(self, served: Served, x: np.ndarray, announced: bool = False) -> Future:
        """Queue one request's (n, *input_shape) batch for `served`; the future resolves to its (n, K) rows.

        Args:
            served: the model the request is pinned to.
            x: its validated batch.
            announced: the request was announced with `arriving()`.
        """
        request = _Request(served, x)
        with self._cond:
            if announced:
                self._arriving -= 1
            if self._closed:
                raise BatchFailed("the server is shutting down")
            # the first request starts a batch; a full queue or nobody else on the way ends the wait early
            wake = not self._queue or not self._arriving or self._queued_images + len(x) >= self.max_images
            self._queue.append(request)
            self._queued_images += len(x)
            if wake:
                self._cond.notify()
        return request.future

    def close(self) -> None:
        """Stop the inference threads after their current call; queued requests fail with BatchFailed."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for request in pending:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(BatchFailed("the server is shutting down"))

    def _work(self) -> None:
        """One inference thread: gather a batch, run it, repeat until closed."""
        while True:
            batch = self._gather()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _gather(self) -> list[_Request] | None:
        """The next batch (possibly empty when its requests were cancelled); None once closed."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._queue[0].arrived + self.max_wait
            while self._queue and self._arriving and self._queued_images < self.max_images and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._take()
            if self._queue:  # more waiting: let another thread start on them
                self._cond.notify()
            return batch

    def _take(self) -> list[_Request]:
        """Pop queued requests for one call: arrival order, same model as the first, <= max_images in all."""
        batch: list[_Request] = []
        images = 0
        while self._queue:
            head = self._queue[0]
            if batch and (head.served is not batch[0].served or images + len(head.x) > self.max_images):
                break
            self._queue.popleft()
            self._queued_images -= len(head.x)
            if head.future.set_running_or_notify_cancel():  # False: the client went away
                batch.append(head)
                images += len(head.x)
        return batch

    def _run(self, batch: list[_Request]) -> None:
        """One interpreter call (or several of <= max_images for one oversized request); each gets its rows."""
        served = batch[0].served
        x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
        try:
            probs = served.probabilities(x, self.max_images)
        except Exception as exc:
            log.exception("inference failed for a batch of %d images (v%s)", len(x), served.version)
            error = BatchFailed(
                f"inference failed for this batch of {len(batch)} requests on v{served.version}: "
                f"{type(exc).__name__}: {exc}"
            )
            for request in batch:
                request.future.set_exception(error)
            return
        if self.on_batch:
            for start in range(0, len(x), self.max_images):
                self.on_batch(min(self.max_images, len(x) - start), len(batch))
        offset = 0
        for request in batch:
            request.future.set_result(probs[offset : offset + len(request.x)])
            offset += len(request.x)
