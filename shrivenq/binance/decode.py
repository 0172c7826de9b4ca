"""Binance JSON, decoded strictly: stream envelopes, depth updates, depth snapshots and
exchangeInfo, into fixed-point integers. Plain Python; the reference for any faster path.

Everything from the exchange is treated as hostile. A message that is not what Binance
documents (not JSON, a missing or mistyped field, a decimal that does not fit the symbol's
scale, ``U > u``) raises ``BinanceMessageError`` naming the symbol, the field and the reason.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
import xxhash

from shrivenq.binance.decimal import parse_fixed, scale_of
from shrivenq.errors import BinanceMessageError
from shrivenq.events import DepthEvent  # noqa: F401  (re-exported: part of this module's API)

MARKETS = ("spot", "usdm")


class SymbolSpec(NamedTuple):
    """A symbol's fixed-point scales: price = int / 10**price_scale, qty likewise."""

    symbol: str
    price_scale: int
    qty_scale: int
    tick_size: str
    step_size: str


class Snapshot(NamedTuple):
    """A REST depth snapshot."""

    symbol: str
    last_update_id: int
    bid_prices: np.ndarray
    bid_qtys: np.ndarray
    ask_prices: np.ndarray
    ask_qtys: np.ndarray


def symbol_key(market: str, symbol: str) -> int:
    """The WAL instrument key of a symbol: xxh3-64 of ``"spot:BTCUSDT"`` / ``"usdm:BTCUSDT"``."""
    return xxhash.xxh3_64_intdigest(f"{market}:{symbol.upper()}".encode())


def loads(raw, where: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        text = raw if isinstance(raw, str) else bytes(raw[:60]).decode("latin-1")
        raise BinanceMessageError(where, f"not JSON ({exc}): {text[:60]!r}") from None


def envelope(raw) -> tuple[str | None, dict]:
    """(stream name or None, data) of a stream message, combined-stream form or bare."""
    msg = loads(raw, "stream message")
    if not isinstance(msg, dict):
        raise BinanceMessageError("stream message", f"expected a JSON object, got {type(msg).__name__}")
    if "stream" in msg and "data" in msg:
        stream, data = msg["stream"], msg["data"]
        if not isinstance(stream, str) or not isinstance(data, dict):
            raise BinanceMessageError("stream message", "'stream' must be a string and 'data' an object")
        return stream, data
    return None, msg


def _int(obj: dict, name: str, where: str) -> int:
    value = obj.get(name)
    if type(value) is not int or value < 0:
        if name not in obj:
            raise BinanceMessageError(where, f"field {name!r} is missing")
        raise BinanceMessageError(where, f"field {name!r} must be a non-negative integer, "
                                         f"not {value!r:.40}")
    return value


def levels(rows: Any, spec: SymbolSpec, where: str) -> tuple[np.ndarray, np.ndarray]:
    """[[price, qty], ...] -> (int64 prices, int64 quantities) at the symbol's scales."""
    if not isinstance(rows, list):
        raise BinanceMessageError(where, f"expected a list of [price, quantity], got "
                                         f"{type(rows).__name__}")
    n = len(rows)
    prices = np.empty(n, dtype=np.int64)
    qtys = np.empty(n, dtype=np.int64)
    ps, qs = spec.price_scale, spec.qty_scale
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) < 2:
            raise BinanceMessageError(f"{where}[{i}]", f"expected [price, quantity], got {row!r:.60}")
        prices[i] = parse_fixed(row[0], ps, f"{where}[{i}] price")
        qtys[i] = parse_fixed(row[1], qs, f"{where}[{i}] quantity")
    return prices, qtys


def depth_event(data: dict, specs: dict[str, SymbolSpec], futures: bool) -> DepthEvent:
    """A depthUpdate's ``data`` object as a DepthEvent (spot: U, u; futures: U, u, pu)."""
    if data.get("e") != "depthUpdate":
        raise BinanceMessageError("depth stream", f"event type {data.get('e')!r:.40} is not depthUpdate")
    symbol = data.get("s")
    if not isinstance(symbol, str):
        raise BinanceMessageError("depthUpdate", "field 's' (symbol) is missing or not a string")
    spec = specs.get(symbol)
    if spec is None:
        raise BinanceMessageError(f"{symbol[:20]} depthUpdate", "symbol was not subscribed or has no "
                                  "exchangeInfo")
    where = f"{symbol} depthUpdate"
    first, last = _int(data, "U", where), _int(data, "u", where)
    if first > last:
        raise BinanceMessageError(where, f"U={first} is after u={last}")
    prev = _int(data, "pu", where) if futures else -1
    event_time = data.get("E", 0)
    if type(event_time) is not int:
        raise BinanceMessageError(where, f"field 'E' must be an integer, not {event_time!r:.40}")
    bp, bq = levels(data.get("b"), spec, f"{where} b")
    ap, aq = levels(data.get("a"), spec, f"{where} a")
    return DepthEvent(symbol, first, last, prev, event_time, bp, bq, ap, aq)


def snapshot(body, spec: SymbolSpec) -> Snapshot:
    """A REST depth snapshot body (bytes as received) for ``spec.symbol``."""
    where = f"{spec.symbol} depth snapshot"
    doc = loads(body, where)
    if not isinstance(doc, dict):
        raise BinanceMessageError(where, f"expected a JSON object, got {type(doc).__name__}")
    last = _int(doc, "lastUpdateId", where)
    bp, bq = levels(doc.get("bids"), spec, f"{where} bids")
    ap, aq = levels(doc.get("asks"), spec, f"{where} asks")
    return Snapshot(spec.symbol, last, bp, bq, ap, aq)


def exchange_info(body, symbols: list[str] | None = None) -> dict[str, SymbolSpec]:
    """Scales of each symbol from an exchangeInfo body: PRICE_FILTER tickSize and LOT_SIZE
    stepSize. With ``symbols``, only those, and each must be present."""
    where = "exchangeInfo"
    doc = loads(body, where)
    if not isinstance(doc, dict) or not isinstance(doc.get("symbols"), list):
        raise BinanceMessageError(where, "expected an object with a 'symbols' list")
    wanted = None if symbols is None else {s.upper() for s in symbols}
    out: dict[str, SymbolSpec] = {}
    for i, entry in enumerate(doc["symbols"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str):
            raise BinanceMessageError(f"{where} symbols[{i}]", "expected an object with 'symbol'")
        name = entry["symbol"]
        if wanted is not None and name not in wanted:
            continue
        filters = {f.get("filterType"): f for f in entry.get("filters") or [] if isinstance(f, dict)}
        try:
            tick = filters["PRICE_FILTER"]["tickSize"]
            step = filters["LOT_SIZE"]["stepSize"]
        except KeyError:
            raise BinanceMessageError(f"{where} {name}", "PRICE_FILTER tickSize or LOT_SIZE "
                                      "stepSize is missing") from None
        out[name] = SymbolSpec(name, scale_of(tick, f"{where} {name} tickSize"),
                               scale_of(step, f"{where} {name} stepSize"), tick, step)
    if wanted is not None:
        missing = sorted(wanted - set(out))
        if missing:
            raise BinanceMessageError(where, f"unknown symbol(s): {', '.join(missing)}")
    return out


def depth_message(raw, specs: dict[str, SymbolSpec], futures: bool) -> DepthEvent | None:
    """A stream message as a DepthEvent when its stream is a depth stream, else None (the
    plain-Python twin of ``shrivenq._ext.binance_depth.decode_depth``). Raises
    BinanceMessageError for a malformed message."""
    stream, data = envelope(raw)
    if stream is None or "@depth" not in stream:
        return None
    return depth_event(data, specs, futures)
