"""Kite packet layouts as big-endian numpy dtypes, and an encoder from TICK_DTYPE rows.

The encoder is the inverse of ``parse_frame``: the simulator builds its frames with it and
the tests use it to make frames. Byte-literal tests check it and the parser independently
against hand-written bytes.
"""

from __future__ import annotations

import numpy as np

from shrivenq._ext.kite_frame import (
    KIND_FULL,
    KIND_INDEX_FULL,
    KIND_INDEX_QUOTE,
    KIND_LTP,
    KIND_QUOTE,
    TICK_DTYPE,
)

DEPTH_ENTRY = np.dtype([("quantity", ">u4"), ("price", ">i4"), ("orders", ">u2"), ("pad", ">u2")])

_LTP_FIELDS = [("token", ">u4"), ("last_price", ">i4")]
_INDEX_FIELDS = _LTP_FIELDS + [("high", ">i4"), ("low", ">i4"), ("open", ">i4"),
                               ("close", ">i4"), ("change", ">i4")]
_QUOTE_FIELDS = _LTP_FIELDS + [
    ("last_quantity", ">u4"), ("average_price", ">i4"), ("volume", ">u4"),
    ("total_buy_quantity", ">u4"), ("total_sell_quantity", ">u4"),
    ("open", ">i4"), ("high", ">i4"), ("low", ">i4"), ("close", ">i4"),
]

#: Wire layout of each packet kind, keyed by kind; itemsize equals the packet length.
PACKET_DTYPES: dict[int, np.dtype] = {
    KIND_LTP: np.dtype(_LTP_FIELDS),
    KIND_INDEX_QUOTE: np.dtype(_INDEX_FIELDS),
    KIND_INDEX_FULL: np.dtype(_INDEX_FIELDS + [("exchange_timestamp", ">u4")]),
    KIND_QUOTE: np.dtype(_QUOTE_FIELDS),
    KIND_FULL: np.dtype(_QUOTE_FIELDS + [
        ("last_trade_time", ">u4"), ("oi", ">u4"), ("oi_day_high", ">u4"),
        ("oi_day_low", ">u4"), ("exchange_timestamp", ">u4"), ("depth", DEPTH_ENTRY, (10,)),
    ]),
}
PACKET_LENGTHS = {kind: dt.itemsize for kind, dt in PACKET_DTYPES.items()}
assert PACKET_LENGTHS == {KIND_LTP: 8, KIND_INDEX_QUOTE: 28, KIND_INDEX_FULL: 32,
                          KIND_QUOTE: 44, KIND_FULL: 184}


def packets_of_kind(rows: np.ndarray, kind: int) -> np.ndarray:
    """Big-endian wire records of ``kind`` for every row (the rows' own kind is ignored)."""
    dt = PACKET_DTYPES[kind]
    out = np.zeros(len(rows), dtype=dt)
    for name in dt.names:
        if name != "depth":
            out[name] = rows[name]
    if kind == KIND_FULL:
        for side, first in (("bid", 0), ("ask", 5)):
            out["depth"]["quantity"][:, first:first + 5] = rows[f"{side}_quantity"]
            out["depth"]["price"][:, first:first + 5] = rows[f"{side}_price"]
            out["depth"]["orders"][:, first:first + 5] = rows[f"{side}_orders"]
    return out


def encode_frame(rows: np.ndarray) -> bytes:
    """One binary frame holding a packet per TICK_DTYPE row, of the kind each row names."""
    if rows.dtype != TICK_DTYPE:
        raise TypeError("rows must be TICK_DTYPE")
    if len(rows) > 0xFFFF:
        raise ValueError(f"a frame holds at most 65535 packets, not {len(rows)}")
    kinds = rows["kind"]
    if len(rows) and (kinds == kinds[0]).all():
        # One kind: a single vectorised record array of (u16 length, packet).
        kind = int(kinds[0])
        wire = np.empty(len(rows), dtype=[("length", ">u2"), ("packet", PACKET_DTYPES[kind])])
        wire["length"] = PACKET_LENGTHS[kind]
        wire["packet"] = packets_of_kind(rows, kind)
        return len(rows).to_bytes(2, "big") + wire.tobytes()
    parts = [len(rows).to_bytes(2, "big")]
    for row in rows:
        kind = int(row["kind"])
        if kind not in PACKET_DTYPES:
            raise ValueError(f"row kind {kind} is not a Kite packet kind")
        parts.append(PACKET_LENGTHS[kind].to_bytes(2, "big"))
        parts.append(packets_of_kind(row[None], kind).tobytes())
    return b"".join(parts)
