"""Rebuild Binance books from the WAL: the same bytes through the same ``BinanceBooks``, in
the same order, give the same books and the same sync decisions the live capture had.

``replay_wal(path)`` reads a venue directory (``data/binance`` or ``data/binance-usdm``) or
any part of it; ``replay_records(records)`` takes ``(kind, conn, payload, keys)`` tuples or
``Record``s from ``shrivenq.wal``. Records are interpreted as capture wrote them
(shrivenq/capture/binance.py): SESSION_START starts from empty books (its argv names the
market), REST without a key is exchangeInfo, REST with a key is that symbol's depth
snapshot, CONNECT/DISCONNECT open and close connections, TEXT is a stream message. GAP
records are capture's own conclusions; replay reaches them again by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import msgpack

# Replay's loop over a run of stream messages (BinanceBooks.on_message for each), compiled.
from shrivenq._ext.binance_depth import on_depth_records as _records
from shrivenq.binance import decode
from shrivenq.binance.books import BinanceBooks
from shrivenq.errors import ReplayError
from shrivenq.wal import Kind, WalReader


@dataclass
class BinanceReplay:
    """The books after the last session in the records, and that session's decisions."""

    market: str = "spot"
    books: BinanceBooks | None = None
    decisions: list[tuple] = field(default_factory=list)
    sessions: int = 0
    ended: bool = False         # the last session's SESSION_STOP was read
    records: int = 0
    #: What the read skipped (with on_corrupt="skip") and torn tails it stopped at.
    skipped: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    _by_key: dict[int, str] = field(default_factory=dict)

    def _start(self, payload: bytes) -> None:
        try:
            doc = msgpack.unpackb(payload, raw=False)
            argv = list(doc.get("argv") or [])
        except Exception:   # noqa: BLE001 - a damaged control record is the WAL's to report
            argv = []
        market = next((a.split("=", 1)[1] for a in argv if isinstance(a, str)
                       and a.startswith("market=")), self.market)
        self.market = market
        listed = next((a.split("=", 1)[1] for a in argv if isinstance(a, str)
                       and a.startswith("symbols=")), "")
        symbols = [s for s in listed.split(",") if s]
        self.books = BinanceBooks(market, symbols or None)
        self._by_key = {}
        self.decisions = []
        self.sessions += 1
        self.ended = False

    def feed(self, kind: int, conn: int, payload: bytes, keys=()) -> tuple:
        """One record; returns the sync actions it caused."""
        self.records += 1
        if kind == Kind.SESSION_START:
            self._start(payload)
            return ()
        if kind == Kind.SESSION_STOP:
            self.ended = True
            return ()
        books = self.books
        if books is None:
            if kind in (Kind.TEXT, Kind.REST):
                raise ReplayError("Binance records before any SESSION_START: not a capture WAL "
                                  "(or its start is missing)")
            return ()
        if kind == Kind.TEXT:
            out = books.on_message(payload)
        elif kind == Kind.REST:
            if len(keys) == 0:
                books.on_exchange_info(payload)
                self._by_key = {decode.symbol_key(books.market, s): s for s in books.specs}
                return ()
            symbol = self._by_key.get(int(keys[0]))
            if symbol is None:
                return ()
            out = books.on_snapshot(symbol, payload)
        elif kind == Kind.CONNECT:
            books.on_connect(conn, msgpack.unpackb(payload, raw=False)["url"])
            return ()
        elif kind == Kind.DISCONNECT:
            out = books.on_disconnect(conn, msgpack.unpackb(payload, raw=False).get("reason", ""))
        else:
            return ()
        if out:
            self.decisions.extend(tuple(a) for a in out)
        return out


def replay_records(records: Iterable) -> BinanceReplay:
    """Records as ``wal.Record`` (or any object with kind, conn, payload, instruments)."""
    rp = BinanceReplay()
    for r in records:
        rp.feed(r.kind, r.conn, r.payload, r.instruments)
    return rp


def replay_wal(path, progress=None, **reader_kw) -> BinanceReplay:
    """Replay the ticks stream under ``path`` (a venue directory, a day, a segment).
    ``progress(records so far, receive time of the batch's last)`` after each batch."""
    rp = BinanceReplay()
    text = int(Kind.TEXT)
    reader = WalReader(path, "ticks", **reader_kw)
    for batch in reader.batches():
        if progress is not None and len(batch):
            progress(rp.records, int(batch.wall_ns[-1]))
        data = batch.data   # the block's payloads, in place: the compiled loop reads views
        kinds, offsets, lengths = batch.kind, batch.offset, batch.length
        n = len(kinds)
        i = 0
        while i < n:
            books = rp.books
            k = int(kinds[i])
            if k == text and books is not None:
                # the hot path: a run of stream messages, in one compiled loop
                if books._fast is not None:
                    j = _records(books, data, kinds, offsets, lengths, i, text, rp.decisions)
                    rp.records += j - i
                    i = j
                    continue
                o = int(offsets[i])
                rp.records += 1
                out = books.on_message(bytes(data[o:o + int(lengths[i])]))
                if out:
                    rp.decisions.extend(tuple(a) for a in out)
            else:
                o = int(offsets[i])
                keys = batch.instruments(i) if batch.inst_count[i] else ()
                rp.feed(k, int(batch.conn[i]), bytes(data[o:o + int(lengths[i])]), keys)
            i += 1
    rp.skipped, rp.torn = [str(p) for p in reader.skipped], [str(t) for t in reader.torn]
    return rp
