"""Binance stream names, connection plans and URLs, sans-I/O.

Spot: one path, ``/stream?streams=...``, for depth, trades and bookTicker. USD-M futures:
depth and bookTicker under ``/public/stream``, trades under ``/market/stream`` (separate
connections since 2026-04; a stream on the wrong path is accepted and silently empty). A
connection carries at most 1024 streams; a symbol's streams always share one connection.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit, urlunsplit

from shrivenq.errors import ConfigError

MAX_STREAMS_PER_CONNECTION = 1024
DEPTH_SPEED = "100ms"
DEFAULT_WS_ROOT = {"spot": "wss://stream.binance.com:9443", "usdm": "wss://fstream.binance.com"}
MARKETS = ("spot", "usdm")
_SYMBOL = re.compile(r"[A-Z0-9]{2,20}")


class ConnectionPlan(NamedTuple):
    path: str
    streams: tuple[str, ...]


def check_symbols(symbols) -> list[str]:
    """Upper-cased, de-duplicated, in order; ConfigError for anything that is not a symbol."""
    out: list[str] = []
    for raw in symbols:
        sym = str(raw).strip().upper()
        if not _SYMBOL.fullmatch(sym):
            raise ConfigError(f"--symbols: {raw!r} is not a Binance symbol like BTCUSDT")
        if sym not in out:
            out.append(sym)
    if not out:
        raise ConfigError("nothing to capture: give --symbols, e.g. BTCUSDT,ETHUSDT")
    return out


def check_market(market: str) -> str:
    if market not in MARKETS:
        raise ConfigError(f"--market {market!r} is not one of {', '.join(MARKETS)}")
    return market


def streams_for(symbol: str, market: str) -> dict[str, list[str]]:
    """path -> stream names for one symbol."""
    s = symbol.lower()
    depth, trade, ticker = f"{s}@depth@{DEPTH_SPEED}", f"{s}@trade", f"{s}@bookTicker"
    if market == "spot":
        return {"/stream": [depth, trade, ticker]}
    return {"/public/stream": [depth, ticker], "/market/stream": [trade]}


def plan(symbols, market: str, per_connection: int = MAX_STREAMS_PER_CONNECTION
         ) -> list[ConnectionPlan]:
    """The connections to open, each within the per-connection stream limit."""
    check_market(market)
    by_path: dict[str, list[list[str]]] = {}
    for sym in check_symbols(symbols):
        for path, names in streams_for(sym, market).items():
            by_path.setdefault(path, []).append(names)
    out: list[ConnectionPlan] = []
    for path, groups in by_path.items():
        current: list[str] = []
        for names in groups:
            if len(current) + len(names) > per_connection:
                out.append(ConnectionPlan(path, tuple(current)))
                current = []
            current.extend(names)
        if current:
            out.append(ConnectionPlan(path, tuple(current)))
    return out


def stream_url(root: str, conn: ConnectionPlan) -> str:
    parts = urlsplit(root)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"Binance stream root must be ws:// or wss://host, not {root!r}")
    base = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, base + conn.path,
                       "streams=" + "/".join(conn.streams), ""))


def streams_of_url(url: str) -> list[str]:
    """The stream names in a combined-stream URL (what a CONNECT record's url holds)."""
    query = parse_qs(urlsplit(url).query)
    return [s for s in (query.get("streams") or [""])[0].split("/") if s]


def depth_symbols_of_url(url: str) -> set[str]:
    """Symbols whose depth stream a connection to ``url`` carries (upper case)."""
    path = urlsplit(url).path
    if path.endswith("/market/stream"):
        return set()
    return {s.split("@", 1)[0].upper() for s in streams_of_url(url) if "@depth" in s}


def stream_symbol(stream: str) -> str:
    """'btcusdt@depth@100ms' -> 'BTCUSDT'."""
    return stream.split("@", 1)[0].upper()
