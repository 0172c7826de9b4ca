"""Order books: Kite's per-instrument state and a general L2 ladder, both fixed-point.

``KiteBooks`` keeps the latest state of every instrument (one TICK_DTYPE row each), merged
from parsed packets by the field groups each packet carried. ``L2Ladder`` keeps absolute
quantities per price level for exchanges that send incremental depth. Both are compiled
(ext/kite_book.pyx, ext/l2_ladder.pyx) with plain-Python twins in ``reference``.

Derived measures work on any array of TICK_DTYPE rows (a ``KiteBooks.state()``, a replay's
output): they return float64 prices (value / divisor), NaN where a side of the book is
empty. ``state_hash`` is the same for the same state on any machine: xxh3-64 of the rows'
little-endian bytes in token order.
"""

from __future__ import annotations

import numpy as np
import xxhash

from shrivenq._ext.kite_book import KiteBooks
from shrivenq._ext.l2_ladder import ASK, BID, L2Ladder

__all__ = ["ASK", "BID", "KiteBooks", "L2Ladder", "imbalance", "microprice", "mid", "spread",
           "state_hash"]


def state_hash(rows: np.ndarray) -> int:
    """Deterministic 64-bit hash of book rows (sorted by token first, so order never matters)."""
    ordered = rows[np.argsort(rows["token"], kind="stable")]
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(ordered).tobytes())


def _touch(rows: np.ndarray):
    bid, ask = rows["bid_price"][:, 0].astype(np.int64), rows["ask_price"][:, 0].astype(np.int64)
    bid_qty = rows["bid_quantity"][:, 0].astype(np.float64)
    ask_qty = rows["ask_quantity"][:, 0].astype(np.float64)
    both = (bid_qty > 0) & (ask_qty > 0)
    return bid, ask, bid_qty, ask_qty, both


def spread(rows: np.ndarray) -> np.ndarray:
    """Best ask minus best bid in the exchange's integer units (int64); -1 where a side is empty."""
    bid, ask, _, _, both = _touch(rows)
    return np.where(both, ask - bid, -1)


def mid(rows: np.ndarray) -> np.ndarray:
    bid, ask, _, _, both = _touch(rows)
    return np.where(both, (bid + ask) / (2.0 * rows["divisor"]), np.nan)


def microprice(rows: np.ndarray) -> np.ndarray:
    """Touch prices weighted by the opposite side's size: leans toward the thinner side."""
    bid, ask, bid_qty, ask_qty, both = _touch(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (bid * ask_qty + ask * bid_qty) / (bid_qty + ask_qty) / rows["divisor"]
    return np.where(both, value, np.nan)


def imbalance(rows: np.ndarray, levels: int = 5) -> np.ndarray:
    """(bid size - ask size) / (bid size + ask size) over the top ``levels`` levels, in [-1, 1]."""
    if not 1 <= levels <= 5:
        raise ValueError(f"levels must be 1 to 5, not {levels}")
    bids = rows["bid_quantity"][:, :levels].sum(axis=1, dtype=np.float64)
    asks = rows["ask_quantity"][:, :levels].sum(axis=1, dtype=np.float64)
    total = bids + asks
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (bids - asks) / total, np.nan)
