"""A simulator server on its own asyncio loop in a background thread, so that synchronous
code (``capture run --sim``, tests, benchmarks) can start it, reach it and stop it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable


class ServerThread:
    """Start ``server`` (an object with ``async start()`` and ``async stop()``) on entering,
    stop it and its loop on leaving. ``run(coro)`` runs a coroutine on the server's loop and
    returns its result; ``call(fn, *args)`` schedules a plain call there."""

    def __init__(self, server: Any, name: str):
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        self.run(self.server.start())
        return self.server

    def __exit__(self, *exc: Any) -> None:
        try:
            self.run(self.server.stop(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def run(self, coro, timeout: float | None = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable, *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)
