"""What the monitoring loop remembers between runs, and the retraining decision made from it.

The state (JSON at `paths.monitor_state`, written atomically) records every processed batch by sha256, so
re-processing a batch is a no-op that returns the first result, plus the accepted batches, recent events and the
count of drifted-or-degraded batches in a row. `should_retrain` asks for retraining after
`monitor.consecutive_batches` bad labelled batches in a row, at most once per `monitor.cooldown_minutes`.

Unlabelled (captured) traffic has its own count: `monitor.consecutive_batches` drifted captured batches in a row open
a drift (`open_drift`, naming the signals that fired), which retrains only once `monitor.min_new_labels` captured
images were labelled since the last trigger (`new_labels`): drift alone, with no new labels, would retrain on
unchanged data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from pipeline.core import io
from pipeline.core.clock import as_utc
from pipeline.core.config import MonitorConfig
from pipeline.core.errors import StageError

HISTORY_LIMIT = 1000  # most recent events kept in the state file


@dataclasses.dataclass
class MonitorState:
    """What the loop remembers between runs (JSON at paths.monitor_state)."""

    consecutive_bad: int = 0
    last_trigger_at: str | None = None
    processed: dict[str, dict] = dataclasses.field(default_factory=dict)  # sha256 -> {file, status, result, ...}
    accepted: list[dict] = dataclasses.field(default_factory=list)  # [{file, sha256, count, at}]
    history: list[dict] = dataclasses.field(default_factory=list)  # recent events, oldest first
    consecutive_drift: int = 0  # drifted unlabelled (captured) batches in a row
    open_drift: dict | None = None  # {"since", "signals": [names], "batches": [files]} until the next trigger
    new_labels: int = 0  # captured images labelled since the last trigger (they wait in paths.accepted)
    label_requests: list[dict] = dataclasses.field(default_factory=list)  # [{id, file, batch, images, signals, at}]
    path: Path | None = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> MonitorState:
        """The state at `path`, or a fresh one when the file does not exist yet."""
        path = Path(path)
        if not path.is_file():
            return cls(path=path)
        try:
            raw = io.read_json(path)
            fields = {f.name for f in dataclasses.fields(cls)} - {"path"}
            return cls(**{k: v for k, v in raw.items() if k in fields}, path=path)
        except (ValueError, TypeError) as exc:
            raise StageError(
                f"{path}: unreadable monitor state ({exc}); fix or delete it (the loop then starts "
                "over and may re-count batches still in the incoming directory)"
            ) from exc

    def to_dict(self) -> dict:
        """The JSON-able fields (everything but the path)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the state atomically to `path` (default: where it was loaded from), keeping the recent history."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("MonitorState.save needs a path (the state was not loaded from a file)")
        self.path = path
        self.history = self.history[-HISTORY_LIMIT:]
        io.write_json(path, self.to_dict())
        return path

    def find_file(self, name: str) -> dict | None:
        """The processed record of the most recent batch that arrived as file `name`."""
        for entry in reversed(list(self.processed.values())):
            if entry["file"] == name:
                return entry
        return None


def note_unlabelled(state: MonitorState, file: str, fired: list[str], at: str, cfg: MonitorConfig) -> None:
    """Count a captured batch: drifted ones in a row (a clean one resets the count) open a drift once there are
    cfg.consecutive_batches of them; an open drift collects the names of the signals that fired (the caller saves).
    """
    state.consecutive_drift = state.consecutive_drift + 1 if fired else 0
    if fired and state.open_drift is not None:
        drift = state.open_drift
        drift["signals"] = sorted({*drift["signals"], *fired})
        drift["batches"] = [*drift["batches"], file][-20:]
    elif fired and state.consecutive_drift >= cfg.consecutive_batches:
        state.open_drift = {"since": at, "signals": sorted(fired), "batches": [file]}


def _why(state: MonitorState, cfg: MonitorConfig) -> tuple[bool, str]:
    """(a retrain is due, why) before the cooldown: bad labelled batches, or open drift with enough new labels."""
    n, need = state.consecutive_bad, cfg.consecutive_batches
    if n >= need:
        return True, f"{n} consecutive drifted/degraded batches (>= {need})"
    if state.open_drift is None:
        return False, f"{n} of {need} consecutive drifted/degraded batches"
    signals, labels = ", ".join(state.open_drift["signals"]), state.new_labels
    if labels < cfg.min_new_labels:
        return False, (
            f"unlabelled drift since {state.open_drift['since']} (signals: {signals}) waits for labels: "
            f"{labels} of {cfg.min_new_labels} captured images labelled"
        )
    return (
        True,
        f"unlabelled drift (signals: {signals}) and {labels} captured images labelled (>= {cfg.min_new_labels})",
    )


def should_retrain(state: MonitorState, cfg: MonitorConfig, now: dt.datetime | None = None) -> tuple[bool, str]:
    """(True, why) when cfg.consecutive_batches bad labelled batches in a row arrived, or an unlabelled drift is open
    and cfg.min_new_labels captured images were labelled since the last trigger; and the cooldown has passed.
    """
    now = as_utc(now)
    go, why = _why(state, cfg)
    if not go:
        return False, why
    if state.last_trigger_at:
        last = as_utc(dt.datetime.fromisoformat(state.last_trigger_at))
        elapsed = (now - last).total_seconds() / 60
        if elapsed < cfg.cooldown_minutes:
            return False, (
                f"{why.split(' (')[0]}, but in cooldown: retraining was triggered at "
                f"{state.last_trigger_at}, {elapsed:.1f} of {cfg.cooldown_minutes:g} minutes ago"
            )
    return True, why


def mark_triggered(state: MonitorState, now: dt.datetime | None = None, reason: str = "") -> MonitorState:
    """Record that retraining was requested: reset the counters (bad batches, drift, new labels) and start the
    cooldown (the caller saves).
    """
    now = as_utc(now)
    state.history.append(
        {
            "at": now.isoformat(),
            "event": "retrain",
            "reason": reason,
            "consecutive_bad": state.consecutive_bad,
            "new_labels": state.new_labels,
            "open_drift": state.open_drift,
        }
    )
    state.consecutive_bad = state.consecutive_drift = state.new_labels = 0
    state.open_drift = None
    state.last_trigger_at = now.isoformat()
    return state
