"""Everything Binance sent, turned into books: the one dispatcher capture and replay share.

``BinanceBooks`` takes the same inputs the WAL keeps, in the same order (stream messages
as received, REST bodies as received, connection opens and closes) and keeps one
``BookSync`` per symbol. It is sans-I/O and deterministic: replaying a WAL through it gives
the very books and decisions the live capture had. Its return values are the sync's
actions (``shrivenq.binance.sync.Action``); the capture acts on FETCH and records GAPs.

Inputs:
    on_exchange_info(body)        a REST exchangeInfo body: the symbols' scales
    on_snapshot(symbol, body)     a REST depth body for ``symbol``
    on_connect(conn, url)         a connection to a combined-stream URL opened
    on_disconnect(conn, reason)   it closed; symbols whose depth no other open connection
                                  carries are reset (a GAP if their book was synced),
                                  unless the reason is "stopped" (the capture's own end)
    on_message(raw)               a stream message (depthUpdate, trade, bookTicker, ...)
"""

from __future__ import annotations

import logging

# The compiled decoder and sync fast path: it declines what it is not sure of, having changed
# nothing, and the plain-Python decoder and BookSync decide.
from shrivenq._ext.binance_depth import DepthRouter, MessageCounters
from shrivenq._ext.binance_depth import on_depth as _fast
from shrivenq.binance import decode
from shrivenq.binance.streams import depth_symbols_of_url, stream_symbol
from shrivenq.binance.sync import BookSync
from shrivenq.errors import BinanceMessageError

log = logging.getLogger("shrivenq.binance.books")


_NONE: tuple = ()


class BinanceBooks:
    """``fast=False`` turns the compiled path off: every message goes through the plain-
    Python decoder and ``BookSync.on_event`` (the tests hold the two to the same results)."""

    def __init__(self, market: str, symbols: list[str] | None = None, fast: bool = True):
        self.market = market
        self._fast = _fast if fast else None
        self.futures = market == "usdm"
        self.wanted = None if symbols is None else [s.upper() for s in symbols]
        self._specs: dict[str, decode.SymbolSpec] = {}
        self.syncs: dict[str, BookSync] = {}
        self.carriers: dict[int, set[str]] = {}     # conn -> symbols whose depth it carries
        self.counters = MessageCounters()
        self.last_error: str = ""
        self._router = None
        if fast and type(self).on_message is BinanceBooks.on_message:
            # on_message's common case in one compiled call; the method below does the same
            # (a subclass that overrides on_message keeps its own)
            self._router = DepthRouter(self, type(self)._plain_message)
            self.on_message = self._router.on_message

    @property
    def specs(self) -> dict[str, decode.SymbolSpec]:
        """Each symbol's scales, from the last exchangeInfo."""
        return self._specs

    @specs.setter
    def specs(self, specs: dict[str, decode.SymbolSpec]) -> None:
        if self._router is not None:
            self._router.specs = specs      # first: it refuses anything but a dict
        self._specs = specs

    # --- REST ------------------------------------------------------------------------------

    def on_exchange_info(self, body) -> None:
        specs = decode.exchange_info(body, self.wanted)
        self.specs = specs
        for sym in specs:
            if sym not in self.syncs:
                self.syncs[sym] = BookSync(sym, self.futures)

    def on_snapshot(self, symbol: str, body) -> tuple:
        sync = self.syncs.get(symbol)
        if sync is None:
            return _NONE
        try:
            snap = decode.snapshot(body, self.specs[symbol])
        except BinanceMessageError as exc:
            self.counters.bad_snapshots += 1
            self.last_error = str(exc)
            log.warning("%s", exc)
            return sync.on_snapshot_failed()
        return sync.on_snapshot(snap)

    # --- connections -----------------------------------------------------------------------

    def on_connect(self, conn: int, url: str) -> None:
        self.carriers[conn] = depth_symbols_of_url(url) & set(self.syncs)

    def on_disconnect(self, conn: int, reason: str = "disconnect") -> tuple:
        gone = self.carriers.pop(conn, set())
        if reason == "stopped":   # the capture ended: books keep their last state
            return _NONE
        still = set().union(*self.carriers.values()) if self.carriers else set()
        out: list = []
        for sym in sorted(gone - still):
            out.extend(self.syncs[sym].reset("disconnect"))
        return tuple(out)

    # --- stream messages -------------------------------------------------------------------

    def on_message(self, raw) -> tuple:
        """A stream message; the sync actions it caused. (With ``fast``, an instance answers
        through its DepthRouter, which does what this method does.)"""
        fast = self._fast
        if fast is not None and type(raw) is bytes:
            # decode + syncs[symbol].on_event(event), the common case in C (it counts)
            out = fast(raw, self.specs, self.futures, self.syncs, self.counters)
            if out is not None:
                return out
        return self._plain_message(raw)

    def _plain_message(self, raw) -> tuple:
        c = self.counters
        c.messages += 1
        try:
            stream, data = decode.envelope(raw)
        except BinanceMessageError as exc:
            c.malformed += 1
            self.last_error = str(exc)
            return _NONE
        if stream is not None and "@depth" in stream:
            c.depth += 1
            try:
                ev = decode.depth_event(data, self.specs, self.futures)
            except BinanceMessageError as exc:
                c.malformed += 1
                self.last_error = str(exc)
                sync = self.syncs.get(stream_symbol(stream))
                return sync.reset("bad_event") if sync is not None else _NONE
            return self.syncs[ev.symbol].on_event(ev)
        if stream is not None and stream.endswith("@trade"):
            c.trades += 1
        elif stream is not None and stream.endswith("@bookTicker"):
            c.book_tickers += 1
        elif data.get("e") == "serverShutdown":
            c.shutdowns += 1
        else:
            c.other += 1
        return _NONE

    # --- state -----------------------------------------------------------------------------

    def book(self, symbol: str):
        return self.syncs[symbol].book

    def state(self) -> dict[str, tuple[int, bytes]]:
        """symbol -> (update id or -1, canonical book bytes): equal states, equal values."""
        return {sym: (s.book_id, s.book.state_bytes()) for sym, s in sorted(self.syncs.items())}
