"""Timing for the reference side of a benchmark's ratio (pytest-benchmark times our side)."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, rounds: int, *args) -> float:
    """Median wall time of ``fn(*args)`` over ``rounds`` calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
