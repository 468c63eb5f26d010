"""Latency measurement shared by evaluation and benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_latency_ms(call: Callable[[], object], runs: int) -> float:
    """Median wall time of `call()` in milliseconds, after one warm-up call."""
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3
