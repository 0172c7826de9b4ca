"""Kite capture: every message of the feed into the WAL, books kept live, snapshots taken.

``capture_kite(settings)`` runs one capture session until its deadline or until ``stop`` is
set (the CLI sets it on SIGINT/SIGTERM), then unsubscribes, drains, snapshots the books,
closes both WAL streams cleanly and returns a ``CaptureSummary``.

Per message, on the event loop: the raw bytes are appended to the ticks stream first, indexed
by the packets' tokens (read from the packet headers alone, which cannot fail); only then is
the frame parsed and are the books updated. A malformed frame is stored and counted like any
other; nothing the exchange sent is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from shrivenq import __version__
from shrivenq.books import KiteBooks
from shrivenq.books.snapshot import encode_kite_snapshot
from shrivenq.capture.session import CaptureSession
from shrivenq.errors import ProtocolError, ShrivenqError
from shrivenq.kite import frame_keys, parse_frame_lenient, parse_text
from shrivenq.kite.feed import FeedEvent, KiteFeed
from shrivenq.kite.protocol import redacted
from shrivenq.wal import IST, Kind, WalWriter
from shrivenq.wal import records as rec

log = logging.getLogger("shrivenq.capture.kite")
_BINARY = int(Kind.BINARY)   # a plain int: no enum attribute lookup on the append path

VENUE = "kite"
# The ticks WAL's zstd level. Below zero zstd stores literals without Huffman coding and
# looks for fewer matches: replay decompresses a full-mode tick in about 120 fewer
# instructions than at level 1 (213 against 331, 30 against 50 ns, on the replay bench's
# day: benches/kite_wal_levels.py), for a log 8-10% larger (19.4 against 18.0 bytes a tick
# on the realistic stream). Replay speed is what this log is read for; compression is
# faster too. Segments written at level 1 read the same.
WAL_LEVEL = -1


@dataclass
class CaptureCounters:
    messages: int = 0
    bytes: int = 0
    ticks: int = 0
    heartbeats: int = 0
    text_messages: int = 0
    exchange_errors: int = 0      # text {"type": "error"} messages from Kite
    malformed_frames: int = 0     # stored raw; their good packets still counted as ticks
    gaps: int = 0
    disconnects: int = 0
    snapshots: int = 0
    last_tick_wall_ns: int = 0


@dataclass
class KiteCaptureSettings:
    token_modes: dict[int, str]
    data_dir: Path
    api_key: str
    access_token: str
    ws_root: str = "wss://ws.kite.trade"
    duration: float | None = None          # seconds; None: until stopped
    snapshot_interval: float = 60.0
    segment_bytes: int = 100_000_000
    fsync: str = "interval:1000"
    compact: bool = True                   # compact each closed ticks segment (wal.compact)
    watchdog: float = 5.0
    session_note: list[str] = field(default_factory=list)   # what was asked, for the record
    names: dict[int, str] = field(default_factory=dict)     # token -> tradingsymbol, recorded
    latency_samples: int = 0   # > 0: record receipt-to-WAL-append latency (LatencyRecorder)


@dataclass
class CaptureSummary:
    session: str
    seconds: float
    counters: CaptureCounters
    instruments: int
    connections: int
    records: int                  # records of the ticks stream written to disk
    wal_bytes: int                # block bytes on disk, after compaction (ticks + snapshots)
    payload_bytes: int            # the raw bytes those blocks hold
    gaps: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    unwritten: int = 0            # records appended that never reached the disk (write error)

    @property
    def ratio(self) -> float:
        return self.payload_bytes / self.wal_bytes if self.wal_bytes else 0.0

    @property
    def lost_anything(self) -> bool:
        """A gap (a span in which the feed was not received: ticks may be missing), or
        records the disk refused."""
        return self.counters.gaps > 0 or self.unwritten > 0


class LatencyRecorder:
    """Per message, nanoseconds from receipt (the feed's monotonic reading when websockets
    handed the message to the loop) to the return of its WAL append, in a preallocated ring
    holding the newest ``capacity`` samples. The end is read with ``time.monotonic_ns``, the
    receipt's own clock (CLOCK_MONOTONIC, which ``perf_counter_ns`` also is on Linux).

    ``histogram()`` folds the samples recorded since its previous call into cumulative
    Prometheus buckets (``/metrics`` calls it at scrape time, not the hot path); samples the
    ring overwrote before a fold are missing from the histogram, not miscounted."""

    #: Bucket upper bounds, ns (+Inf implied).
    BUCKETS_NS = (5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
                  5_000_000, 20_000_000)

    def __init__(self, capacity: int = 1 << 20):
        if capacity < 1:
            raise ShrivenqError("latency recorder capacity must be positive")
        self.capacity = int(capacity)
        self.samples = np.zeros(self.capacity, dtype=np.int64)
        self.count = 0                  # samples recorded so far (may exceed capacity)
        self._folded = 0
        self._buckets = np.zeros(len(self.BUCKETS_NS) + 1, dtype=np.int64)
        self._sum = 0
        self._hist_count = 0

    def add(self, ns: int) -> None:
        self.samples[self.count % self.capacity] = ns
        self.count += 1

    def values(self) -> np.ndarray:
        """The samples held (the newest ``capacity``), oldest first, as a copy."""
        n, cap = self.count, self.capacity
        if n <= cap:
            return self.samples[:n].copy()
        i = n % cap
        return np.concatenate((self.samples[i:], self.samples[:i]))

    def histogram(self) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative (upper bound in seconds, count) pairs ending with +Inf, sum in
        seconds, count) over every sample folded so far."""
        n, cap = self.count, self.capacity
        start = max(self._folded, n - cap)
        if n > start:
            idx = np.arange(start, n) % cap
            new = self.samples[idx]
            self._buckets += np.bincount(np.searchsorted(self.BUCKETS_NS, new, side="left"),
                                         minlength=len(self._buckets))
            self._sum += int(new.sum())
            self._hist_count += len(new)
        self._folded = n
        cum = np.cumsum(self._buckets).tolist()
        bounds = [b / 1e9 for b in self.BUCKETS_NS] + [float("inf")]
        return list(zip(bounds, cum)), self._sum / 1e9, self._hist_count


class KiteRecorder:
    """The feed's sink: WAL first, then books. Also what the status line reads.

    ``latency``: set a LatencyRecorder to time every message from receipt to its WAL append
    (None, the default, costs one attribute test per message)."""

    def __init__(self, ticks: WalWriter, books: KiteBooks, session: str,
                 latency: LatencyRecorder | None = None):
        self.ticks = ticks
        self.books = books
        self.session = session
        self.counters = CaptureCounters()
        self.gaps: list[dict] = []
        self.latency = latency

    def on_message(self, conn: int, message: bytes | str, wall_ns: int, mono_ns: int) -> None:
        c = self.counters
        if type(message) is bytes and len(message) != 1:
            # A frame of ticks, the common case, with as few steps as possible before its
            # append: they run with cold caches after each idle gap between messages. Only
            # the tokens are read for the WAL's instrument index (a walk over the packet
            # headers); counting, the full parse and the books follow the append.
            self.ticks.append(_BINARY, message, wall_ns, mono_ns, conn,
                              instruments=frame_keys(message) or None)
            if self.latency is not None:
                self.latency.add(time.monotonic_ns() - mono_ns)
            c.messages += 1
            c.bytes += len(message)
            rows, issues = parse_frame_lenient(message)
            if issues:
                c.malformed_frames += 1
                log.warning("connection %d: malformed frame stored raw (%d bytes): %s", conn,
                            len(message), "; ".join(str(e) for e in issues[:3]))
            if len(rows):
                self.books.apply(rows)
                c.ticks += len(rows)
                c.last_tick_wall_ns = wall_ns
            return
        if not isinstance(message, str):
            message = bytes(message)     # bytes-like, from a caller other than websockets
            if len(message) != 1:
                return self.on_message(conn, message, wall_ns, mono_ns)
            c.messages += 1
            c.bytes += 1
            c.heartbeats += 1
            self.ticks.append(Kind.BINARY, message, wall_ns, mono_ns, conn)
            if self.latency is not None:
                self.latency.add(time.monotonic_ns() - mono_ns)
            return
        c.messages += 1
        payload = message.encode("utf-8", "surrogateescape")
        c.bytes += len(payload)
        self.ticks.append(Kind.TEXT, payload, wall_ns, mono_ns, conn)
        if self.latency is not None:
            self.latency.add(time.monotonic_ns() - mono_ns)
        c.text_messages += 1
        self._text(conn, message)

    def _text(self, conn: int, message: str) -> None:
        try:
            text = parse_text(message)
        except ProtocolError as exc:
            log.warning("connection %d: unreadable text message stored raw: %s", conn, exc)
            return
        if text.type == "error":
            self.counters.exchange_errors += 1
            log.error("connection %d: Kite says: %s", conn, text.data)

    def on_event(self, event: FeedEvent) -> None:
        d = event.detail
        if event.kind == "connect":
            records = [rec.connect(event.conn, d.get("url", ""))]
        elif event.kind == "subscribe":
            tokens = [t for ts in d["modes"].values() for t in ts]
            records = [rec.subscribe(event.conn, tokens)]
            records += [rec.mode(event.conn, m, ts) for m, ts in sorted(d["modes"].items())]
        elif event.kind == "unsubscribe":
            records = [rec.unsubscribe(event.conn, d["tokens"])]
        elif event.kind == "disconnect":
            self.counters.disconnects += 1
            records = [rec.disconnect(event.conn, None, d["reason"])]
        elif event.kind == "gap":
            self.counters.gaps += 1
            self.gaps.append({"conn": event.conn, **d})
            records = [rec.gap(event.conn, d["from_ns"], d["to_ns"], d["reason"])]
        else:
            log.warning("unknown feed event %r ignored", event.kind)
            return
        for kind, payload in records:
            self.ticks.append(kind, payload, event.wall_ns, event.mono_ns,
                                                   event.conn)


StatusCallback = Callable[["KiteCapture"], None]


class KiteCapture(CaptureSession):
    """One capture session. Build it, then ``await run(stop)``."""

    def __init__(self, settings: KiteCaptureSettings):
        if not settings.token_modes:
            raise ShrivenqError("nothing to capture: no instruments were given")
        if settings.snapshot_interval <= 0:
            raise ShrivenqError("snapshot interval must be positive seconds")
        self.settings = settings
        self.session = uuid.uuid4().hex
        self.started_mono = time.monotonic()
        self.books = KiteBooks()
        self.recorder: KiteRecorder | None = None
        # Built here so that Kite's limits and the URL are checked before anything is written.
        self.feed = KiteFeed(settings.api_key, settings.access_token, settings.token_modes,
                             self, root=settings.ws_root, watchdog=settings.watchdog)
        self.ticks: WalWriter | None = None
        self.snapshots: WalWriter | None = None

    # The feed's sink until the WAL is open; run() then points the feed at the recorder.
    def on_message(self, conn: int, message: bytes | str, wall_ns: int, mono_ns: int) -> None:
        self.recorder.on_message(conn, message, wall_ns, mono_ns)

    def on_event(self, event: FeedEvent) -> None:
        self.recorder.on_event(event)

    def _open_wal(self) -> None:
        s = self.settings
        common = dict(tz=IST, fsync=s.fsync, segment_bytes=s.segment_bytes)
        # Ticks blocks are sealed every second for durability, which leaves about one packet
        # per instrument a block; compaction re-blocks each closed segment (wal/compact.py).
        self.ticks = WalWriter(s.data_dir, VENUE, "ticks", level=WAL_LEVEL,
                               compact=s.compact, **common)
        try:
            self.snapshots = WalWriter(s.data_dir, VENUE, "snapshots", **common)
        except BaseException:
            self.ticks.close()
            raise
        for report in self.ticks.recovery + self.snapshots.recovery:
            log.warning("recovered after an unclean stop: %s", report)

    def snapshot(self) -> None:
        """Write every live book to the snapshots stream, and a mark in the ticks stream at
        this very point, so that replay knows exactly which ticks the snapshot holds."""
        wall, mono = self.feed.now()
        number = self.recorder.counters.snapshots
        kind, mark = rec.snapshot_mark(self.session, number)
        self.ticks.append(kind, mark, wall, mono)
        payload = encode_kite_snapshot(self.books.state(), self.session, number, wall)
        self.snapshots.append(Kind.BOOK_SNAPSHOT, payload, wall, mono)
        self.recorder.counters.snapshots += 1

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_interval)
            self.snapshot()

    async def run(self, stop: asyncio.Event | None = None,
                  on_status: StatusCallback | None = None, status_every: float = 0.5
                  ) -> CaptureSummary:
        s = self.settings
        stop = stop or asyncio.Event()
        self._open_wal()
        self.recorder = KiteRecorder(
            self.ticks, self.books, self.session,
            LatencyRecorder(s.latency_samples) if s.latency_samples > 0 else None)
        # From here the feed hands messages to the recorder itself: one Python call less
        # between a message's receipt and its WAL append, which runs with cold caches.
        self.feed.sink = self.recorder
        reason = "stopped"
        helpers: list[asyncio.Task] = []
        try:
            wall, mono = self.feed.now()
            kind, payload = rec.session_start(self.session, VENUE, __version__, s.session_note,
                                              s.names)
            self.ticks.append(kind, payload, wall, mono)
            log.info("capturing %d instruments from %s over %d connection(s) into %s",
                     len(s.token_modes), redacted(self.feed.url), len(self.feed.shards),
                     s.data_dir)
            helpers.append(asyncio.create_task(self._snapshot_loop()))
            if on_status is not None:
                helpers.append(asyncio.create_task(self._status_loop(on_status, status_every)))
            if s.duration is not None:
                helpers.append(asyncio.create_task(self._deadline(stop, s.duration)))
            await self.feed.run(stop)
            reason = "duration reached" if self._deadline_hit else "stopped"
        except BaseException as exc:
            reason = f"failed: {type(exc).__name__}"
            raise
        finally:
            await self._stop_helpers(helpers)
            self._close(reason)
        return self.summary(reason)

    def _close(self, reason: str) -> None:
        """Final snapshot, session stop, then both WAL streams closed cleanly (footers,
        fsync). Runs even when the capture failed, so what was received is kept."""
        errors = []
        try:
            if self.recorder is not None:
                self.snapshot()
                wall, mono = self.feed.now()
                kind, payload = rec.session_stop(self.session, reason)
                self.ticks.append(kind, payload, wall, mono)
        except ShrivenqError as exc:
            errors.append(exc)
        for writer in (self.ticks, self.snapshots):
            if writer is None:
                continue
            try:
                writer.close()
            except ShrivenqError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def summary(self, reason: str = "") -> CaptureSummary:
        stats = [w.stats for w in (self.ticks, self.snapshots) if w is not None]
        return CaptureSummary(
            session=self.session, seconds=time.monotonic() - self.started_mono,
            counters=self.recorder.counters, instruments=len(self.settings.token_modes),
            connections=len(self.feed.shards),
            records=self.ticks.stats.written_records if self.ticks else 0,
            wal_bytes=sum(st.bytes_on_disk for st in stats),
            payload_bytes=sum(st.payload_bytes for st in stats),
            gaps=list(self.recorder.gaps), stop_reason=reason,
            unwritten=(self.ticks.stats.appended_records - self.ticks.stats.written_records
                       if self.ticks and reason.startswith("failed") else 0))
