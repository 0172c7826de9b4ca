"""Event types shared by the compiled core and the exchange adapters. They sit below both
in the import order, so that ``shrivenq._ext`` never imports an adapter."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DepthEvent(NamedTuple):
    """One depthUpdate. ``prev_id`` is futures' ``pu`` (-1 on spot)."""

    symbol: str
    first_id: int
    last_id: int
    prev_id: int
    event_time: int
    bid_prices: np.ndarray
    bid_qtys: np.ndarray
    ask_prices: np.ndarray
    ask_qtys: np.ndarray
