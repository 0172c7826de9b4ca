"""Plain-Python twin of ``replay.output``'s column-at-a-time rows, written for clarity: one
dict per book row, field by field. The property tests hold ``output._columns`` to it (same
keys, order, values and types) and the output benchmark measures against it."""

from __future__ import annotations

import numpy as np

from shrivenq.timeutil import iso_ns


def reference_rows(rows: np.ndarray, names: dict[int, str]) -> list[dict]:
    """The rows ``replay --out`` writes, as dicts: time (ISO 8601, IST), wall_ns, token,
    symbol, feed_down (the book may be stale: see ``output.sample``), last price (divided by the divisor, 1 where it is 0), quantities, then five
    levels a side of price and quantity."""
    out = []
    for r in rows:
        div = float(r["divisor"]) or 1.0
        row = {"time": iso_ns(int(r["wall_ns"])), "wall_ns": int(r["wall_ns"]),
               "token": int(r["token"]), "symbol": names.get(int(r["token"]), ""),
               "feed_down": bool(r["feed_down"]),
               "last_price": int(r["last_price"]) / div,
               "last_quantity": int(r["last_quantity"]), "volume": int(r["volume"]),
               "oi": int(r["oi"])}
        for side in ("bid", "ask"):
            for level in range(5):
                row[f"{side}_price_{level + 1}"] = int(r[f"{side}_price"][level]) / div
                row[f"{side}_qty_{level + 1}"] = int(r[f"{side}_quantity"][level])
        out.append(row)
    return out
