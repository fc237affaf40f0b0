"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(call: Callable[[], object], repeats: int, pause_s: float = 0.0) -> float:
    """Median wall-clock milliseconds of `call` over `repeats` runs, after one untimed warm-up.
    `pause_s` is slept (untimed) before each run, for work the caller lets finish in between."""
    call()
    times = []
    for _ in range(repeats):
        time.sleep(pause_s)
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
