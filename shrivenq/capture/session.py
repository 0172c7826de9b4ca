"""What the run loops of Kite and Binance capture share: the --duration deadline, the status
line's refresh loop, and stopping helper tasks at the end."""

from __future__ import annotations

import asyncio
from typing import Callable


class CaptureSession:
    """A mixin for a capture class whose ``run`` starts helper tasks beside its feed."""

    _deadline_hit = False   # the run ended because --duration (or --until) was reached

    async def _deadline(self, stop: asyncio.Event, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._deadline_hit = True
        stop.set()

    async def _status_loop(self, on_status: Callable, every: float) -> None:
        while True:
            on_status(self)
            await asyncio.sleep(every)

    @staticmethod
    async def _stop_helpers(helpers: list[asyncio.Task]) -> None:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
