"""An independent reference for the book sync, written straight from Binance's documented
procedure (and the rules listed in ``shrivenq.binance.sync``), on a SortedDict book. It
shares no code with ``BookSync``; the property tests feed both the same inputs and demand
the same books and the same decisions.

Inputs are ``("event", DepthEvent)``, ``("snapshot", Snapshot)`` and ``("reset", reason)``;
``step`` returns the decisions as tuples ``(kind, reason, book_id, first_id, last_id)``.
"""

from __future__ import annotations

from shrivenq.books.reference import ReferenceLadder

ASK, BID = 1, 0


class ReferenceSync:
    def __init__(self, futures: bool = False, max_buffer: int = 10_000):
        self.futures = futures
        self.max_buffer = max_buffer
        self.book = ReferenceLadder()
        self.update_id = None          # None: there is no local book
        self.events: list = []         # step 2: buffered events
        self.snapshot = None           # a snapshot not yet used
        self.asked = False             # a snapshot request is outstanding

    # --- helpers written from the documentation ----------------------------------------------

    def _new_book(self) -> None:
        self.book = ReferenceLadder()

    def _set_levels(self, side: int, prices, qtys) -> None:
        for price, qty in zip(prices.tolist(), qtys.tolist()):
            self.book.set_level(side, price, qty)   # absolute; 0 removes the level

    def _continues(self, event) -> bool:
        if self.futures:
            return event.prev_id == self.update_id   # "each new event's pu should equal
            #                                           the previous event's u"
        return event.first_id == self.update_id + 1

    def _first_ok(self, event, last_update_id: int) -> bool:
        if self.futures:   # "U <= lastUpdateId AND u >= lastUpdateId", or it follows it
            return (event.first_id <= last_update_id <= event.last_id
                    or event.prev_id == last_update_id)
        return event.first_id <= last_update_id + 1 <= event.last_id

    def _record(self, out, kind, reason, event=None, last=None):
        out.append((kind, reason, -1 if self.update_id is None else self.update_id,
                    -1 if event is None else event.first_id,
                    (-1 if event is None else event.last_id) if last is None else last))

    def _lose_book(self, out, reason, event, keep):
        self._record(out, "gap", reason, event)
        self._new_book()
        self.update_id = None
        self.snapshot = None
        self.events = keep
        if not self.asked:
            self.asked = True
            self._record(out, "fetch", "resync", event)

    def _process(self, event, out) -> bool:
        """The update procedure on a live book; False when the book was lost."""
        if event.last_id <= self.update_id:
            return True                                   # old news
        if not self._continues(event):
            self._lose_book(out, "sequence", event, [event])
            return False
        self._set_levels(BID, event.bid_prices, event.bid_qtys)
        self._set_levels(ASK, event.ask_prices, event.ask_qtys)
        self.update_id = event.last_id
        if self.book.is_crossed():
            self._lose_book(out, "crossed", event, [])
            return False
        return True

    def _use_snapshot(self, out) -> None:
        snap = self.snapshot
        lid = snap.last_update_id
        self.events = [e for e in self.events if e.last_id > lid]
        if not self.events:
            return
        if not self._first_ok(self.events[0], lid):
            self.snapshot = None
            self.asked = True
            self._record(out, "fetch", "stale_snapshot", self.events[0])
            return
        self._new_book()
        self._set_levels(BID, snap.bid_prices, snap.bid_qtys)
        self._set_levels(ASK, snap.ask_prices, snap.ask_qtys)
        self.snapshot = None
        if self.book.is_crossed():
            self._new_book()
            self.asked = True
            self._record(out, "fetch", "crossed_snapshot", None, lid)
            return
        self._record(out, "synced", "snapshot", None, lid)
        self.update_id = lid
        pending, self.events = self.events, []
        for i, event in enumerate(pending):
            if i == 0:   # already checked to straddle: applied as is
                self._set_levels(BID, event.bid_prices, event.bid_qtys)
                self._set_levels(ASK, event.ask_prices, event.ask_qtys)
                self.update_id = event.last_id
                if self.book.is_crossed():
                    self._lose_book(out, "crossed", event, [])
                    self.events.extend(pending[1:])
                    return
                continue
            if not self._process(event, out):
                self.events.extend(pending[i + 1:])
                return

    # --- the input ---------------------------------------------------------------------------

    def step(self, what: str, item) -> list[tuple]:
        out: list[tuple] = []
        if what == "event":
            if self.update_id is not None:
                self._process(item, out)
                return out
            self.events.append(item)
            if len(self.events) > self.max_buffer:
                del self.events[0]
            if self.snapshot is not None:
                self._use_snapshot(out)
            elif not self.asked:
                self.asked = True
                self._record(out, "fetch", "start", item)
        elif what == "snapshot":
            if self.update_id is None and self.asked:
                self.asked = False
                self.snapshot = item
                self._use_snapshot(out)
        elif what == "reset":
            if self.update_id is not None:
                self._record(out, "gap", item)
            self._new_book()
            self.update_id = None
            self.events = []
            self.snapshot = None
        else:
            raise ValueError(what)
        return out

    def levels(self, side: int) -> list[tuple[int, int]]:
        return self.book.top(side, 1 << 30)
