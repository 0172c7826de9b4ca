"""A progress line for long commands (replay, wal verify): one line on stderr, redrawn at
most a few times a second, only when stderr is a terminal, and erased when the work ends, so
that piped or logged output holds only the result.

The library calls a plain callback with numbers; this module only draws them, so the replay
and WAL code know nothing of terminals.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from shrivenq.timeutil import IST_OFFSET_NS

REDRAW_S = 0.25


class ProgressLine:
    """``with ProgressLine() as line: ... line.show(text)``. ``show`` is cheap to call often:
    it redraws at most every ``REDRAW_S`` seconds. Does nothing when ``stream`` is not a
    terminal."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.enabled = _is_terminal(self.stream)
        self._drawn_at: float | None = None
        self._width = 0

    def __enter__(self) -> "ProgressLine":
        return self

    def __exit__(self, *exc) -> None:
        self.clear()

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self._drawn_at is not None and now - self._drawn_at < REDRAW_S:
            return
        self._drawn_at = now
        # Pad over the previous, longer text rather than rely on terminal escapes.
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


def _count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:.0f}"


class ReplayProgress:
    """The callback ``run_replay`` takes: ``(ticks so far, receive time of the last one,
    start_ns, end_ns)``, drawn as "replay: 11:02:13 IST, 12.3M ticks, 3.1M ticks/s[, 42%]":
    the share of start_ns..end_ns passed, when the range has an end. ``binance``: Binance
    replay's, which counts stream messages and keeps UTC."""

    def __init__(self, line: ProgressLine, binance: bool = False):
        self.line = line
        self.began = line.clock()
        self.unit, self.zone, self.offset_ns = (("messages", "UTC", 0) if binance
                                                else ("ticks", "IST", IST_OFFSET_NS))

    def __call__(self, ticks: int, wall_ns: int, start_ns: int | None = None,
                 end_ns: int | None = None) -> None:
        if not self.line.enabled:
            return
        elapsed = self.line.clock() - self.began
        at = time.strftime("%H:%M:%S", time.gmtime((wall_ns + self.offset_ns) // 1_000_000_000))
        text = f"replay: {at} {self.zone}, {_count(ticks)} {self.unit}"
        if elapsed > 0:
            text += f", {_count(ticks / elapsed)} {self.unit}/s"
        if start_ns is not None and end_ns is not None and end_ns > start_ns:
            share = (wall_ns - start_ns) / (end_ns - start_ns)
            text += f", {min(max(share, 0.0), 1.0):.0%}"
        self.line.show(text)



class VerifyProgress:
    """The callback ``wal.verify`` takes: ``(segments done, segments in all, records so
    far)``, drawn as "verify: 12/345 segments, 1.2M records"."""

    def __init__(self, line: ProgressLine):
        self.line = line

    def __call__(self, done: int, total: int, records: int) -> None:
        self.line.show(f"verify: {done}/{total} segments, {_count(records)} records")
