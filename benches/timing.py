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


def interleaved(samples: list[float], baseline, every: int = 1):
    """A pytest-benchmark ``setup`` that times ``baseline()`` into ``samples`` before every
    ``every``-th round of ours: the two sides of a ratio then see the same state of the
    shared machine. (The benchmarked call takes its arguments from ``pedantic(args=...)``.)"""
    rounds = 0

    def setup():
        nonlocal rounds
        if rounds % every == 0:
            start = time.perf_counter()
            baseline()
            samples.append(time.perf_counter() - start)
        rounds += 1
    return setup
