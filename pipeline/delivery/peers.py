"""Hot reload across uvicorn worker processes: POST /reload, answered by one worker, reloads them all.

With `deploy.serve_workers` > 1 each worker holds its own model and polls the source on its own. The workers of
one server share a directory (created by `serve`): POST /reload checks its own worker, then bumps a generation
counter there and waits until every live worker has checked its source too (each worker's watcher thread polls
the counter every `poll` seconds and acknowledges with its version in `ack-<pid>.json`). So once POST /reload
has answered, every worker serves the new version, as a single process would. A worker whose own poll finds a new
version broadcasts the same way, so the others follow within one model load instead of one `reload_seconds`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from pathlib import Path

from pipeline.core.io import pid_alive
from pipeline.delivery.holder import ModelHolder

GENERATION = "generation"


def _write(path: Path, text: str) -> None:
    """Replace `path` atomically (readers never see a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ReloadPeers:
    """This worker's side of the shared reload directory: its watcher thread and `broadcast()`."""

    def __init__(self, root: Path, holder: ModelHolder, poll: float = 0.05):
        """Join the directory `root` (acknowledging the current generation) for `holder`."""
        self.root, self.holder, self.poll = Path(root), holder, poll
        self.pid = os.getpid()
        self._seen = self._generation()
        self._ack(self._seen)
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="reload-peers", daemon=True)

    def start(self) -> None:
        """Start watching the generation counter."""
        self._thread.start()

    def close(self) -> None:
        """Stop watching and leave the directory."""
        self.stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            (self.root / f"ack-{self.pid}.json").unlink()

    def _generation(self) -> int:
        try:
            return int((self.root / GENERATION).read_text() or 0)
        except (OSError, ValueError):
            return 0

    def _ack(self, generation: int) -> None:
        state = {"generation": generation, "version": self.holder.current.version, "error": self.holder.last_error}
        _write(self.root / f"ack-{self.pid}.json", json.dumps(state))

    def _watch(self) -> None:
        """Check the source whenever another worker bumped the generation; acknowledge with the version served."""
        while not self.stop.wait(self.poll):
            generation = self._generation()
            if generation != self._seen:
                with contextlib.suppress(Exception):  # logged by check(); the ack carries last_error
                    self.holder.check()
                self._seen = generation
                self._ack(generation)

    def _acks(self) -> dict[int, dict]:
        acks = {}
        for path in self.root.glob("ack-*.json"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(path.stem.removeprefix("ack-"))
                if pid_alive(pid):
                    acks[pid] = json.loads(path.read_text())
        return acks

    def broadcast(self, timeout: float = 120.0) -> dict[str, dict]:
        """Make every other live worker check its source now; wait for them. {pid: {"version", "error"}}."""
        with open(self.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation = self._generation() + 1
            self._seen = generation  # this worker has just checked: its watcher need not
            _write(self.root / GENERATION, str(generation))
        self._ack(generation)
        deadline = time.monotonic() + timeout
        while True:
            acks = self._acks()
            pending = [pid for pid, ack in acks.items() if ack.get("generation", 0) < generation]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(self.poll / 2)
        return {
            str(pid): {"version": ack.get("version"), "error": "no answer" if pid in pending else ack.get("error")}
            for pid, ack in sorted(acks.items())
        }
