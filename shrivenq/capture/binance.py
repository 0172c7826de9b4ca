"""Binance capture: every stream message and every REST body into the WAL, exactly as
received, then an exact L2 book per symbol kept in sync (docs/BINANCE.md).

``BinanceCapture(settings).run(stop)`` fetches exchangeInfo (the symbols' scales; unknown
symbols are refused before anything is written), opens the WAL (venue ``binance`` for spot,
``binance-usdm`` for USD-M; trading day in UTC; stream ``ticks``), and then, per message on
the event loop: append the raw text to the WAL, then hand it to ``BinanceBooks`` (the same
dispatcher replay uses) and act on what it says: fetch a snapshot (paced; its body is
appended as a REST record before it is applied) or record a GAP. A message that cannot be
decoded is stored and counted like any other; nothing the exchange sent is dropped.

Records (kinds from ``shrivenq.wal.records``):
    SESSION_START / SESSION_STOP
    REST      exchangeInfo body (no instrument key); depth snapshot body (the symbol's key)
    CONNECT   {conn, url}: the combined-stream URL, which names the connection's streams
    SUBSCRIBE {conn, instruments}: the keys of the symbols on that connection
    TEXT      a stream message as received (the symbol's key when its stream names one)
    DISCONNECT {conn, code, reason}; "handover: ..." when a new connection took over
    GAP       {conn, from_ns, to_ns, reason}: feed-level (no connection up) with conn set,
              or book-level "SYMBOL: sequence|crossed|disconnect|bad_event ..." with the
              symbol's key
Instrument keys: ``shrivenq.binance.decode.symbol_key(market, symbol)``, xxh3-64 of
"spot:BTCUSDT" / "usdm:BTCUSDT".

``run_binance_capture(settings, sim=False)`` is the whole of ``capture run --exchange
binance``: signals, optional simulator, summary, exit code (0 clean, 1 error, 3 a gap).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from shrivenq import __version__
from shrivenq.binance import decode
from shrivenq.binance.books import BinanceBooks
from shrivenq.binance.feed import DEFAULT_MAX_AGE, BinanceFeed, FeedEvent
from shrivenq.binance.rest import (
    WEIGHT_LIMIT, SnapshotFetcher, WeightPacer, check_limit, fetch_exchange_info, make_client)
from shrivenq.binance.streams import (
    DEFAULT_WS_ROOT, check_market, check_symbols, plan, stream_symbol, streams_of_url)
from shrivenq.binance.sync import FETCH, GAP, SYNCED
from shrivenq.capture.session import CaptureSession
from shrivenq.capture.status import Rate, StatusLine, fmt_bytes
from shrivenq.errors import BinanceMessageError, ConfigError, ShrivenqError
from shrivenq.wal import UTC, Kind, WalWriter
from shrivenq.wal import records as rec

log = logging.getLogger("shrivenq.capture.binance")

VENUES = {"spot": "binance", "usdm": "binance-usdm"}
# The WAL's zstd level for Binance's JSON. Level 9 makes replay's decompression about 30%
# cheaper than level 1 (2,467 against 3,500 instructions a depth message, 42% of replay's
# work at level 1) and the log 15% smaller; it compresses at about 100k messages/s on one
# core of this machine, ten times what a full 1024-stream connection sends, and the WAL
# writer drops to level 1 whenever it falls behind (WalWriter's ``level``).
WAL_LEVEL = 9
EXIT_OK, EXIT_ERROR, EXIT_LOSS = 0, 1, 3


@dataclass
class BinanceCaptureSettings:
    symbols: list[str]
    data_dir: Path
    market: str = "spot"                   # spot | usdm
    ws_root: str | None = None             # default: Binance's (by market)
    rest_root: str | None = None           # default: python-binance's (the real exchange)
    duration: float | None = None          # seconds; None: until stopped
    snapshot_limit: int = 1000
    segment_bytes: int = 100_000_000
    fsync: str = "interval:1000"
    compact: bool = True                   # compact each closed ticks segment (wal.compact)
    watchdog: float = 30.0
    max_age: float = DEFAULT_MAX_AGE       # proactive reconnect before Binance's 24 h cut
    weight_share: float = 0.5              # of the IP's REST weight per minute we may use
    weight_limit: int | None = None        # the IP's weight per window (default: Binance's)
    weight_window: float = 60.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    session_note: list[str] = field(default_factory=list)


@dataclass
class BinanceCaptureSummary:
    session: str
    market: str
    seconds: float
    symbols: int
    connections: int
    records: int
    wal_bytes: int
    payload_bytes: int
    messages: dict[str, int]
    sync: dict[str, dict[str, int]]         # symbol -> BookSync counters
    feed_gaps: list[dict] = field(default_factory=list)
    book_gaps: list[dict] = field(default_factory=list)
    handovers: int = 0
    snapshots_fetched: int = 0
    snapshot_failures: int = 0
    stop_reason: str = ""
    out_of_sync: list[str] = field(default_factory=list)   # books not in sync at the end
    unwritten: int = 0          # records appended that never reached the disk (write error)

    @property
    def lost_anything(self) -> bool:
        """A feed gap (no connection) or a book gap (a synced book had to be rebuilt), or
        records the disk refused."""
        return bool(self.feed_gaps or self.book_gaps or self.unwritten)


class BinanceCapture(CaptureSession):
    """One capture session. Build it (arguments are checked here), then ``await run(stop)``."""

    def __init__(self, settings: BinanceCaptureSettings):
        s = settings
        self.settings = s
        self.market = check_market(s.market)
        self.symbols = check_symbols(s.symbols)
        check_limit(self.market, s.snapshot_limit)
        if s.duration is not None and s.duration <= 0:
            raise ConfigError(f"--duration must be positive seconds, not {s.duration}")
        self.venue = VENUES[self.market]
        self.plans = plan(self.symbols, self.market)
        self.session = uuid.uuid4().hex
        self.started_mono = time.monotonic()
        self.books = BinanceBooks(self.market, self.symbols)
        self.keys = {sym: decode.symbol_key(self.market, sym) for sym in self.symbols}
        self._stream_keys: dict[str, list[int] | None] = {}
        self.feed = BinanceFeed(self.plans, self, root=s.ws_root or DEFAULT_WS_ROOT[self.market],
                                watchdog=s.watchdog, max_age=s.max_age,
                                backoff_base=s.backoff_base, backoff_cap=s.backoff_cap)
        self.client = make_client(self.market, s.rest_root)
        self.fetcher = SnapshotFetcher(
            self.client, self.market, self._on_snapshot, limit=s.snapshot_limit,
            pacer=WeightPacer(s.weight_limit or WEIGHT_LIMIT[self.market], s.weight_share,
                              s.weight_window))
        self.ticks: WalWriter | None = None
        self.feed_gaps: list[dict] = []
        self.book_gaps: list[dict] = []
        self.decisions: list[tuple] = []   # every sync action, in order (for tests and replay)
        self.last_seq = -1
        self._last_wall: dict[str, int] = {}
        self._deadline_hit = False

    # --- the feed's sink: WAL first, then books --------------------------------------------

    def _keys_of(self, message: str) -> list[int] | None:
        # '{"stream":"btcusdt@depth@100ms","data":...}': the stream name is at a fixed place.
        if message.startswith('{"stream":"'):
            end = message.find('"', 11)
            stream = message[11:end]
            keys = self._stream_keys.get(stream, False)
            if keys is False:
                key = self.keys.get(stream_symbol(stream))
                keys = self._stream_keys[stream] = [key] if key is not None else None
            return keys
        return None

    def on_message(self, conn: int, message, wall_ns: int, mono_ns: int) -> None:
        if isinstance(message, str):
            payload = message.encode("utf-8", "surrogateescape")
            keys = self._keys_of(message)
        else:   # Binance sends text; a binary frame is stored as received and not decoded
            payload = bytes(message)
            self.last_seq = self.ticks.append(Kind.BINARY, payload, wall_ns, mono_ns, conn)
            self.books.counters.malformed += 1
            return
        self.last_seq = self.ticks.append(Kind.TEXT, payload, wall_ns, mono_ns, conn,
                                          instruments=keys)
        actions = self.books.on_message(payload)
        if actions:
            self._act(actions, conn, wall_ns, mono_ns)
        elif keys is not None and "@depth" in message[:40]:
            self._last_wall[stream_symbol(message[11:message.find('"', 11)])] = wall_ns

    def on_event(self, event: FeedEvent) -> None:
        d, conn, wall, mono = event.detail, event.conn, event.wall_ns, event.mono_ns
        actions: tuple = ()
        if event.kind == "connect":
            syms = {stream_symbol(s) for s in streams_of_url(d["url"])}
            records = [rec.connect(conn, d["url"]),
                       rec.subscribe(conn, [self.keys[s] for s in self.symbols if s in syms])]
            self.books.on_connect(conn, d["url"])
        elif event.kind == "disconnect":
            records = [rec.disconnect(conn, None, d["reason"])]
            actions = self.books.on_disconnect(conn, d["reason"])
        elif event.kind == "gap":
            self.feed_gaps.append({"conn": conn, "from_ns": d["from_ns"], "to_ns": d["to_ns"],
                                   "reason": d["reason"]})
            records = [rec.gap(conn, d["from_ns"], d["to_ns"], d["reason"])]
        else:
            log.warning("unknown feed event %r ignored", event.kind)
            return
        for kind, payload in records:
            self.last_seq = self.ticks.append(kind, payload, wall, mono, conn)
        if actions:
            self._act(actions, conn, wall, mono)

    def _on_snapshot(self, symbol: str, body: bytes, wall_ns: int, mono_ns: int) -> None:
        self.last_seq = self.ticks.append(Kind.REST, body, wall_ns, mono_ns, 0,
                                          instruments=[self.keys[symbol]])
        actions = self.books.on_snapshot(symbol, body)
        if actions:
            self._act(actions, 0, wall_ns, mono_ns)

    def _act(self, actions, conn: int, wall_ns: int, mono_ns: int) -> None:
        for a in actions:
            self.decisions.append(tuple(a))
            if a.kind == FETCH:
                if a.reason not in ("start", "resync"):
                    log.info("%s: fetching another snapshot (%s)", a.symbol, a.reason)
                self.fetcher.request(a.symbol)
            elif a.kind == GAP:
                since = self._last_wall.get(a.symbol, wall_ns)
                reason = (f"{a.symbol}: {a.reason} (book at update {a.book_id}, "
                          f"event U={a.first_id} u={a.last_id})")
                self.book_gaps.append({"symbol": a.symbol, "reason": a.reason,
                                       "from_ns": since, "to_ns": wall_ns})
                kind, payload = rec.gap(conn, since, wall_ns, reason)
                self.last_seq = self.ticks.append(kind, payload, wall_ns, mono_ns, conn,
                                                  instruments=[self.keys[a.symbol]])
                log.warning("book gap: %s; resyncing", reason)
            elif a.kind == SYNCED:
                log.info("%s: book in sync at update %d", a.symbol, a.last_id)
            self._last_wall[a.symbol] = wall_ns

    # --- the session -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None,
                  on_status: Callable[["BinanceCapture"], None] | None = None,
                  status_every: float = 0.5) -> BinanceCaptureSummary:
        s = self.settings
        stop = stop or asyncio.Event()
        # Before anything is written: the symbols must exist (their scales come from here).
        info = await asyncio.to_thread(fetch_exchange_info, self.client, self.market)
        info_wall, info_mono = time.time_ns(), time.monotonic_ns()
        try:
            decode.exchange_info(info, self.symbols)
        except BinanceMessageError as exc:
            if "unknown symbol" in exc.reason:
                raise ConfigError(f"--symbols: {exc.reason} on Binance {self.market}") from None
            raise
        self.ticks = WalWriter(s.data_dir, self.venue, "ticks", tz=UTC, fsync=s.fsync,
                               segment_bytes=s.segment_bytes, level=WAL_LEVEL,
                               compact=s.compact)
        for report in self.ticks.recovery:
            log.warning("recovered after an unclean stop: %s", report)
        reason = "stopped"
        helpers: list[asyncio.Task] = []
        try:
            kind, payload = rec.session_start(self.session, self.venue, __version__,
                                              [f"market={self.market}",
                                               f"symbols={','.join(self.symbols)}",
                                               *s.session_note])
            self.last_seq = self.ticks.append(kind, payload, info_wall, info_mono)
            self.last_seq = self.ticks.append(Kind.REST, info, info_wall, info_mono)
            self.books.on_exchange_info(info)
            log.info("capturing %d Binance %s symbols over %d connection(s) into %s",
                     len(self.symbols), self.market, len(self.plans), s.data_dir)
            helpers.append(asyncio.create_task(self.fetcher.run(), name="binance-snapshots"))
            if on_status is not None:
                helpers.append(asyncio.create_task(self._status_loop(on_status, status_every)))
            if s.duration is not None:
                helpers.append(asyncio.create_task(self._deadline(stop, s.duration)))
            feed = asyncio.create_task(self.feed.run(stop), name="binance-feed")
            fetcher_failed = asyncio.create_task(self._watch_helpers(helpers[:1]))
            helpers += [feed, fetcher_failed]
            done, _ = await asyncio.wait([feed, fetcher_failed],
                                         return_when=asyncio.FIRST_COMPLETED)
            if fetcher_failed in done and not feed.done():
                stop.set()
                await feed
                fetcher_failed.result()
            feed.result()
            reason = "duration reached" if self._deadline_hit else "stopped"
        except BaseException as exc:
            reason = f"failed: {type(exc).__name__}"
            raise
        finally:
            await self._stop_helpers(helpers)
            self._close(reason)
        return self.summary(reason)

    @staticmethod
    async def _watch_helpers(tasks: list[asyncio.Task]) -> None:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if not t.cancelled():
                t.result()

    def _close(self, reason: str) -> None:
        if self.ticks is None:
            return
        errors = []
        try:
            kind, payload = rec.session_stop(self.session, reason)
            self.ticks.append(kind, payload, time.time_ns(), time.monotonic_ns())
        except ShrivenqError as exc:
            errors.append(exc)
        try:
            self.ticks.close()
        except ShrivenqError as exc:
            errors.append(exc)
        if errors:
            raise errors[0]

    def summary(self, reason: str = "") -> BinanceCaptureSummary:
        st = self.ticks.stats if self.ticks is not None else None
        return BinanceCaptureSummary(
            session=self.session, market=self.market,
            seconds=time.monotonic() - self.started_mono, symbols=len(self.symbols),
            connections=len(self.plans), records=st.written_records if st else 0,
            wal_bytes=st.bytes_on_disk if st else 0, payload_bytes=st.payload_bytes if st else 0,
            messages=self.books.counters.as_dict(),
            sync={sym: s.counters.as_dict() for sym, s in self.books.syncs.items()},
            feed_gaps=list(self.feed_gaps), book_gaps=list(self.book_gaps),
            handovers=sum(x.handovers for x in self.feed.stats),
            snapshots_fetched=self.fetcher.bodies, snapshot_failures=self.fetcher.failures,
            stop_reason=reason,
            out_of_sync=sorted(sym for sym, s in self.books.syncs.items() if not s.synced),
            unwritten=(st.appended_records - st.written_records
                       if st is not None and reason.startswith("failed") else 0))


class BinanceStatus:
    """The Binance capture's status line: connections, books in sync, messages/s, gaps, WAL."""

    def __init__(self) -> None:
        self.rate = Rate()

    def __call__(self, capture: BinanceCapture) -> str | None:
        if capture.ticks is None:
            return None
        up = sum(1 for st in capture.feed.stats if st.connected)
        synced = sum(1 for s in capture.books.syncs.values() if s.synced)
        c = capture.books.counters
        gaps = len(capture.feed_gaps) + len(capture.book_gaps)
        colour = "green" if up == len(capture.feed.stats) and gaps == 0 else "red"
        return (f"[{colour}]●[/] binance {capture.market} {up}/{len(capture.feed.stats)} conn · "
                f"{synced}/{len(capture.symbols)} books in sync · "
                f"{self.rate.update(c.messages):,.0f} messages/s · {c.messages:,} messages · "
                f"gaps {len(capture.feed_gaps)} feed, {len(capture.book_gaps)} book · "
                f"WAL {fmt_bytes(capture.ticks.stats.bytes_on_disk)}")


def format_summary(s: BinanceCaptureSummary, data_dir: Path) -> str:
    m = s.messages
    lines = [
        f"capture {s.session[:8]} (binance {s.market}) {s.stop_reason} after {s.seconds:.1f}s",
        f"  symbols {s.symbols} over {s.connections} connection(s), "
        f"{s.symbols - len(s.out_of_sync)} books in sync at the end",
        f"  messages {m['messages']:,}: depth {m['depth']:,}, trades {m['trades']:,}, "
        f"bookTicker {m['book_tickers']:,}, other {m['other'] + m['shutdowns']}",
        f"  snapshots {s.snapshots_fetched} ({s.snapshot_failures} failed requests, retried), "
        f"handovers {s.handovers}",
        f"  WAL records {s.records:,}, {fmt_bytes(s.wal_bytes)} on disk for "
        f"{fmt_bytes(s.payload_bytes)} of payload",
        f"  data in {data_dir / VENUES[s.market]}",
    ]
    if m["malformed"] or m["bad_snapshots"]:
        lines.append(f"  malformed messages {m['malformed']}, bad snapshots "
                     f"{m['bad_snapshots']} (stored raw)")
    if s.unwritten:
        lines.append(f"  LOST: {s.unwritten:,} records received but not written (the WAL "
                     "failed; what is on disk before them is intact)")
    if s.out_of_sync:
        lines.append(f"  NOT IN SYNC at the end: {', '.join(s.out_of_sync)}")
    if s.feed_gaps or s.book_gaps:
        lines.append(f"  GAPS: {len(s.feed_gaps)} feed, {len(s.book_gaps)} book:")
        for g in s.feed_gaps[:5]:
            lines.append(f"    conn {g['conn']}: {(g['to_ns'] - g['from_ns']) / 1e9:.2f}s "
                         f"({g['reason']})")
        for g in s.book_gaps[:10]:
            after = "not resynced by the end" if g["symbol"] in s.out_of_sync else "resynced"
            lines.append(f"    {g['symbol']}: {g['reason']}, {after}")
    elif s.unwritten:
        lines.append("  no feed or book gaps before the WAL failed")
    elif not s.out_of_sync:
        lines.append("  no gaps: every book stayed in sync")
    return "\n".join(lines)


def run_binance_capture(settings: BinanceCaptureSettings, *, sim: bool = False,
                        sim_interval: float = 0.1, out: TextIO | None = None,
                        status: bool = False) -> int:
    """The whole of ``shrivenq capture run --exchange binance``; returns the exit code
    (0 clean, 3 a gap). Errors the user can fix raise ShrivenqError (exit 1) before anything
    is written; a failure part-way raises after the WAL was closed cleanly. ``status``: a
    live status line on stderr."""
    out = out or sys.stdout
    capture = BinanceCapture(settings)   # checks symbols, market, limits
    if not sim:
        return _run(capture, settings, out, status)
    from shrivenq.sim.binance_server import SimThread

    with SimThread(market=capture.market, interval=sim_interval) as server:
        settings.ws_root, settings.rest_root = server.ws_url, server.rest_url
        capture = BinanceCapture(settings)
        print(f"simulator on {server.ws_url} (REST {server.rest_url})", file=sys.stderr)
        return _run(capture, settings, out, status)


def _run(capture: BinanceCapture, settings: BinanceCaptureSettings, out: TextIO,
         status: bool) -> int:
    async def main() -> BinanceCaptureSummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if not status:
                return await capture.run(stop)
            with StatusLine(BinanceStatus()) as line:
                return await capture.run(stop, on_status=line)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        summary = asyncio.run(main())
    except ShrivenqError:
        if capture.ticks is not None:
            print(format_summary(capture.summary("failed"), settings.data_dir), file=out)
        raise
    print(format_summary(summary, settings.data_dir), file=out)
    return EXIT_LOSS if summary.lost_anything else EXIT_OK
