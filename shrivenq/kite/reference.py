"""Plain-Python twin of the compiled Kite parser, written for clarity, not speed.

The property tests check ``shrivenq.kite.parse_frame`` against this row for row. It reads
the layout with ``struct`` straight from the protocol description, sharing no code with the
Cython parser.
"""

from __future__ import annotations

import struct

import numpy as np

from shrivenq.errors import KiteFrameError
from shrivenq.kite import TICK_DTYPE

_KINDS = {8: 1, 28: 2, 32: 3, 44: 4, 184: 5}
_MODES = {1: 0, 2: 1, 3: 2, 4: 1, 5: 2}
_FIELDS = {1: 1, 2: 1 | 2, 3: 1 | 2 | 8, 4: 1 | 2 | 4, 5: 63}


def _divisor(segment: int) -> int:
    if segment == 3:
        return 10_000_000
    if segment in (6, 12):
        return 10_000
    return 100


def reference_parse_frame(frame: bytes) -> np.ndarray:
    if len(frame) == 0:
        raise KiteFrameError(0, "empty frame")
    if len(frame) == 1:
        return np.zeros(0, dtype=TICK_DTYPE)
    (count,) = struct.unpack_from(">H", frame, 0)
    rows = []
    pos = 2
    for _ in range(count):
        if pos + 2 > len(frame):
            raise KiteFrameError(pos, "missing packet header")
        (plen,) = struct.unpack_from(">H", frame, pos)
        if pos + 2 + plen > len(frame):
            raise KiteFrameError(pos, "packet runs past the frame")
        if plen not in _KINDS:
            raise KiteFrameError(pos, "unknown packet length")
        rows.append(_row(frame[pos + 2:pos + 2 + plen]))
        pos += 2 + plen
    if pos != len(frame):
        raise KiteFrameError(pos, "trailing bytes")
    out = np.zeros(len(rows), dtype=TICK_DTYPE)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i][name] = value
    return out


def _row(p: bytes) -> dict:
    kind = _KINDS[len(p)]
    token, last_price = struct.unpack_from(">Ii", p, 0)
    segment = token & 0xFF
    row = {"token": token, "last_price": last_price, "segment": segment,
           "divisor": _divisor(segment), "tradable": int(segment != 9), "kind": kind,
           "mode": _MODES[kind], "fields": _FIELDS[kind], "packet_length": len(p)}
    if kind in (2, 3):
        high, low, open_, close, change = struct.unpack_from(">5i", p, 8)
        row.update(high=high, low=low, open=open_, close=close, change=change)
        if kind == 3:
            (row["exchange_timestamp"],) = struct.unpack_from(">I", p, 28)
    elif kind in (4, 5):
        (ltq, atp, vol, tbq, tsq, open_, high, low, close) = struct.unpack_from(">IiIIIiiii", p, 8)
        row.update(last_quantity=ltq, average_price=atp, volume=vol, total_buy_quantity=tbq,
                   total_sell_quantity=tsq, open=open_, high=high, low=low, close=close)
        if kind == 5:
            ltt, oi, oih, oil, ets = struct.unpack_from(">5I", p, 44)
            row.update(last_trade_time=ltt, oi=oi, oi_day_high=oih, oi_day_low=oil,
                       exchange_timestamp=ets)
            for side, start in (("bid", 64), ("ask", 124)):
                levels = [struct.unpack_from(">IiH", p, start + 12 * i) for i in range(5)]
                row[f"{side}_quantity"] = [q for q, _, _ in levels]
                row[f"{side}_price"] = [pr for _, pr, _ in levels]
                row[f"{side}_orders"] = [o for _, _, o in levels]
    return row
