"""Keeping a local L2 book in sync with Binance, sans-I/O: feed it depth events, snapshots
and resets; it applies what it can and tells you what to do (fetch a snapshot) and what
happened (a gap, a successful sync). Nothing here touches a socket or a clock, so the same
inputs always give the same book and the same decisions: capture and replay share it.

The rules, as Binance documents them (spot "How to manage a local order book correctly",
USD-M "How to manage a local order book correctly"):

1. The stream is open and its events are buffered. On the first buffered event, ask for a
   snapshot (``FETCH`` "start").
2. When a snapshot with ``lastUpdateId`` L arrives: drop buffered events with ``u <= L``.
   If none is left, keep the snapshot and wait for the next event.
3. The first remaining event must straddle L. Spot: ``U <= L + 1`` (its ``u > L`` already).
   USD-M: ``U <= L`` or ``pu == L``. If it does not, the snapshot is older than the stream:
   drop it and ask for another (``FETCH`` "stale_snapshot").
4. Otherwise the book becomes the snapshot (``SYNCED``), its update id is L, and the buffered
   events are applied, then every new one, each under the update rule:
   - ``u <=`` the book's id: already in the book (a duplicate or late event): ignored;
   - spot ``U == id + 1`` / USD-M ``pu == id``: applied, the book's id becomes ``u``;
   - anything else: a sequence gap. ``GAP`` "sequence", the book is discarded, and the sync
     starts again from step 2 with this event as the first buffered one (``FETCH`` "resync").
5. Quantities are absolute; zero deletes the level.
6. A book that is crossed (best bid >= best ask) after an event cannot be right: ``GAP``
   "crossed" and a resync. A crossed snapshot is refused: ``FETCH`` "crossed_snapshot".
7. ``reset(reason)`` (the stream dropped, an undecodable event): the book is discarded
   (``GAP`` reason if it was synced) and the sync restarts at step 1.
8. A snapshot body that cannot be decoded (``on_snapshot_failed``): ``FETCH`` "bad_snapshot".

A snapshot that arrives when none was asked for, or after the book is synced, is ignored.
The buffer holds at most ``max_buffer`` events; beyond that the oldest are dropped (a later
snapshot then only needs the newer ones).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from shrivenq._ext.binance_depth import SyncCounters   # applied, levels, stale, ..., as_dict()
from shrivenq.binance.decode import DepthEvent, Snapshot
from shrivenq.books import ASK, BID, L2Ladder

FETCH = "fetch"      # ask for a REST snapshot
GAP = "gap"          # a synced book was lost: updates were missed or it went wrong
SYNCED = "synced"    # the book is in sync again


class Action(NamedTuple):
    kind: str        # FETCH, GAP or SYNCED
    symbol: str
    reason: str      # FETCH: start, stale_snapshot, crossed_snapshot, bad_snapshot, resync;
    #                  GAP: sequence, crossed, or the reset's reason; SYNCED: snapshot
    book_id: int     # the book's update id before the action (-1: not synced)
    first_id: int    # U of the event that caused it (-1: none)
    last_id: int     # u of that event, or a snapshot's lastUpdateId for SYNCED


_NONE: tuple = ()


class BookSync:
    """One symbol's book and its sync state."""

    # Slots: the compiled router reads book_id, book, futures and counters on every message.
    __slots__ = ("symbol", "futures", "book", "book_id", "buffer", "pending", "fetching",
                 "max_buffer", "counters")

    def __init__(self, symbol: str, futures: bool = False, book: L2Ladder | None = None,
                 max_buffer: int = 10_000):
        self.symbol = symbol
        self.futures = futures
        self.book = book if book is not None else L2Ladder()
        self.book_id = -1                     # update id of the book; -1 while not synced
        self.buffer: deque[DepthEvent] = deque()
        self.pending: Snapshot | None = None  # a snapshot waiting for its straddling event
        self.fetching = False                 # a snapshot was asked for and not yet given
        self.max_buffer = max_buffer
        self.counters = SyncCounters()

    @property
    def synced(self) -> bool:
        return self.book_id >= 0

    def _act(self, kind: str, reason: str, first: int = -1, last: int = -1) -> Action:
        return Action(kind, self.symbol, reason, self.book_id, first, last)

    # --- inputs ----------------------------------------------------------------------------

    def on_event(self, ev: DepthEvent) -> tuple:
        # The synced branch below (stale, or applied then the crossed check) has a compiled
        # twin, ``shrivenq._ext.binance_depth.on_depth``, which BinanceBooks uses: it reads
        # and writes book_id, book, futures and the applied/levels/stale counters, calls
        # _restart("crossed", ...) itself, and hands every other case here. Change both.
        book_id = self.book_id
        if book_id >= 0:
            symbol, first, last, prev, _, bp, bq, ap, aq = ev
            if last <= book_id:
                self.counters.stale += 1
                return _NONE
            if (prev == book_id) if self.futures else (first == book_id + 1):
                # _apply, inlined: this is the per-message hot path
                book = self.book
                nb, na = len(bp), len(ap)
                if nb:
                    book.apply(BID, bp, bq)
                if na:
                    book.apply(ASK, ap, aq)
                self.book_id = last
                c = self.counters
                c.applied += 1
                c.levels += nb + na
                if book.is_crossed():
                    return self._restart("crossed", ev, ())
                return _NONE
            return self._restart("sequence", ev, (ev,))
        self.buffer.append(ev)
        if len(self.buffer) > self.max_buffer:
            self.buffer.popleft()
            self.counters.overflow += 1
        if self.pending is not None:
            return self._try_sync()
        if not self.fetching:
            self.fetching = True
            return (self._act(FETCH, "start", ev.first_id, ev.last_id),)
        return _NONE

    def on_snapshot(self, snap: Snapshot) -> tuple:
        if self.book_id >= 0 or not self.fetching:
            self.counters.snapshots_ignored += 1
            return _NONE
        self.counters.snapshots += 1
        self.fetching = False
        self.pending = snap
        return self._try_sync()

    def on_snapshot_failed(self) -> tuple:
        """A snapshot body that could not be decoded: ask for another, if one was wanted."""
        if self.book_id >= 0 or not self.fetching:
            self.counters.snapshots_ignored += 1
            return _NONE
        self.counters.refetches += 1
        return (self._act(FETCH, "bad_snapshot"),)

    def reset(self, reason: str) -> tuple:
        """The stream was interrupted (or an event was unreadable): start over."""
        self.counters.resets += 1
        was = self.book_id
        out = (self._act(GAP, reason),) if was >= 0 else _NONE
        if was >= 0:
            self.counters.gaps += 1
        self.book.clear()
        self.book_id = -1
        self.buffer.clear()
        self.pending = None
        return out

    # --- internals -------------------------------------------------------------------------

    def _apply(self, ev: DepthEvent) -> None:
        book = self.book
        if len(ev.bid_prices):
            book.apply(BID, ev.bid_prices, ev.bid_qtys)
        if len(ev.ask_prices):
            book.apply(ASK, ev.ask_prices, ev.ask_qtys)
        self.book_id = ev.last_id
        c = self.counters
        c.applied += 1
        c.levels += len(ev.bid_prices) + len(ev.ask_prices)

    def _restart(self, reason: str, ev: DepthEvent, keep) -> tuple:
        gap = self._act(GAP, reason, ev.first_id, ev.last_id)
        self.counters.gaps += 1
        self.book.clear()
        self.book_id = -1
        self.pending = None
        self.buffer = deque(keep)
        if self.fetching:
            return (gap,)
        self.fetching = True
        return (gap, self._act(FETCH, "resync", ev.first_id, ev.last_id))

    def _straddles(self, ev: DepthEvent, last_update_id: int) -> bool:
        if self.futures:
            return ev.first_id <= last_update_id or ev.prev_id == last_update_id
        return ev.first_id <= last_update_id + 1

    def _try_sync(self) -> tuple:
        snap = self.pending
        L = snap.last_update_id
        buf = self.buffer
        while buf and buf[0].last_id <= L:
            buf.popleft()
            self.counters.buffered_dropped += 1
        if not buf:
            return _NONE
        first = buf[0]
        if not self._straddles(first, L):
            self.pending = None
            self.fetching = True
            self.counters.refetches += 1
            return (self._act(FETCH, "stale_snapshot", first.first_id, first.last_id),)
        book = self.book
        book.clear()
        book.apply(BID, snap.bid_prices, snap.bid_qtys)
        book.apply(ASK, snap.ask_prices, snap.ask_qtys)
        self.pending = None
        if book.is_crossed():
            book.clear()
            self.fetching = True
            self.counters.refetches += 1
            return (self._act(FETCH, "crossed_snapshot", -1, L),)
        self.counters.syncs += 1
        out = [self._act(SYNCED, "snapshot", -1, L)]
        self.book_id = L
        buf.popleft()
        self._apply(first)
        if book.is_crossed():
            out.extend(self._restart("crossed", first, ()))
            self.buffer.extend(buf)
            return tuple(out)
        while buf:
            ev = buf.popleft()
            if ev.last_id <= self.book_id:
                self.counters.stale += 1
                continue
            if (ev.prev_id == self.book_id) if self.futures else (ev.first_id == self.book_id + 1):
                self._apply(ev)
                if book.is_crossed():
                    out.extend(self._restart("crossed", ev, ()))
                    self.buffer.extend(buf)
                    return tuple(out)
                continue
            out.extend(self._restart("sequence", ev, (ev,)))
            self.buffer.extend(buf)
            return tuple(out)
        return tuple(out)
