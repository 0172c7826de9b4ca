"""The live status line of a running capture (rich), and the byte sizes its lines print."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Rate:
    """Events per second of a growing count, over the last second or so."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), 0)
        self.per_s = 0.0

    def update(self, count: int) -> float:
        now = time.monotonic()
        then, count_then = self._last
        if now - then >= 1.0:
            self.per_s = (count - count_then) / (now - then)
            self._last = (now, count)
        return self.per_s


class StatusLine:
    """One live line on stderr, redrawn with ``render(capture)`` each time it is called
    (None: not yet). Log lines print above it instead of tearing through it."""

    def __init__(self, render: Callable[[object], str | None], stream: TextIO | None = None):
        from rich.console import Console
        from rich.live import Live

        self.render = render
        self.console = Console(file=stream or sys.stderr)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "StatusLine":
        from rich.logging import RichHandler

        root = logging.getLogger()
        self._saved = root.handlers[:]
        root.handlers = [RichHandler(console=self.console, show_path=False)]
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()
        logging.getLogger().handlers = self._saved

    def __call__(self, capture) -> None:
        text = self.render(capture)
        if text is not None:
            self.live.update(text)
