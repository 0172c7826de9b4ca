"""WalWriter: the capture side appends, a background thread compresses, writes and fsyncs.

    with WalWriter("data", "kite", "ticks", tz=IST) as wal:
        wal.append(Kind.BINARY, message, wall_ns, mono_ns, conn=1, instruments=tokens)

``append`` only takes a lock and appends to the open block. A block is sealed when its
payloads reach ``block_bytes``, when ``flush_interval`` seconds passed since its first
record, or at the trading-day boundary; sealed blocks wait in a bounded queue. When the
queue is full ``append`` blocks (backpressure: nothing is ever dropped), and the wait is
counted in ``stats.queue_full_waits`` and logged. The writer thread writes every block it
finds queued, then fsyncs per the policy (group commit). An append wakes it only when it
sleeps, when a backlog forms or when a block filled within ``POLL_S`` (a fast stream); while
a block is open it looks for sealed blocks every ``POLL_S`` (50 ms), so that appending a slow
stream, on capture's latency path, rarely makes a system call. ``durable_records`` is how many
records (in append order, from 0) are known to be on disk and fsynced; ``on_durable`` is
called with it, from the writer thread, whenever it grows. With the defaults (blocks sealed
after at most 1 s, ``interval:1000``) a record is durable about 2 s after its append at the
latest; ``flush()`` makes everything appended so far durable now, whatever the policy.

Opening a writer takes an exclusive lock on the venue/stream and repairs a segment a
crashed writer left without a footer (``recovery`` lists what was done); new records always
go to a new segment, so a good block is never rewritten.

An OSError in the writer thread (disk full, permission, vanished directory) stops it: the
partial block is cut off so the segment ends at its last good block, and the error is
raised as WalIOError naming the path from the next append/flush/close.
"""

from __future__ import annotations

import fcntl
import logging
import operator
import os
import signal
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from shrivenq.errors import ConfigError, WalError, WalFormatError, WalIOError, WalLockedError
from shrivenq.wal import format as fmt
from shrivenq.wal import layout
from shrivenq.wal.compact import Compactor
from shrivenq.wal.records import RECORD_VERSION
from shrivenq.wal.segment import (
    FooterAccumulator, RepairReport, footer_bytes, fsync_dir, open_segment, repair_segment)

log = logging.getLogger("shrivenq.wal")

DEFAULT_SEGMENT_BYTES = 100 * 1000 * 1000
DEFAULT_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class FsyncPolicy:
    """``every-block``, ``interval:MS``, ``on-rotate`` or ``never`` (a clean close always
    fsyncs)."""

    mode: str
    interval: float = 0.0

    @classmethod
    def parse(cls, spec: "str | FsyncPolicy") -> "FsyncPolicy":
        if isinstance(spec, FsyncPolicy):
            return spec
        s = str(spec).strip().lower()
        if s in ("every-block", "on-rotate", "never"):
            return cls(s)
        if s.startswith("interval:"):
            try:
                ms = float(s.split(":", 1)[1])
            except ValueError:
                ms = -1
            if ms > 0:
                return cls("interval", ms / 1000.0)
        raise ConfigError(f"--fsync {spec!r}: use every-block, interval:MS, on-rotate or never")

    def __str__(self) -> str:
        return f"interval:{self.interval * 1000:g}" if self.mode == "interval" else self.mode


@dataclass
class WriterStats:
    appended_records: int = 0
    written_records: int = 0      # in blocks on disk (after a write error, fewer than appended)
    blocks_written: int = 0
    bytes_written: int = 0        # block frames on disk
    payload_bytes: int = 0        # payload bytes those blocks hold
    fsyncs: int = 0
    segments_opened: int = 0
    queue_full_waits: int = 0
    queue_full_seconds: float = 0.0
    fast_blocks: int = 0          # compressed at FAST_LEVEL because the writer was behind
    segments_compacted: int = 0   # by the writer's compactor (``compact``)
    compaction_saved_bytes: int = 0   # block frame bytes compaction took off those segments

    @property
    def bytes_on_disk(self) -> int:
        """Block frames on disk now: written, less what compaction saved."""
        return self.bytes_written - self.compaction_saved_bytes


_DEFAULT_VERSIONS = np.array([RECORD_VERSION.get(k, 1) for k in range(256)], dtype=np.uint8)


# A writer with a zstd level above FAST_LEVEL compresses at FAST_LEVEL while at least
# BEHIND_BLOCKS sealed blocks wait behind the one it is compressing: a higher level costs
# the writer thread 5-10x the time (level 9 about 44 MB/s here, level 1 about 400), and it must
# never be what makes capture wait. zstd reads any level alike; the footer records ``level``
# only for compaction to compress at.
FAST_LEVEL = 1
BEHIND_BLOCKS = 2


# How often the writer thread looks for sealed blocks while a block is open, instead of
# being woken by each append that seals one: at most this much later on disk.
POLL_S = 0.05


class _Sealed:
    __slots__ = ("parts", "day", "first", "count", "nbytes", "has_inst")

    def __init__(self, parts, day, first, count, nbytes, has_inst):
        self.parts, self.day, self.first, self.count = parts, day, first, count
        self.nbytes, self.has_inst = nbytes, has_inst


_KEY_STRUCTS: dict[int, struct.Struct] = {}


def _pack_keys(instruments) -> bytes:
    """Instrument keys as little-endian u64 bytes; ValueError if one is not in [0, 2**64).
    Keys already packed that way (bytes, a bytearray or a byte memoryview, a multiple of 8
    long) are taken as they are, which for ``bytes`` is the cheapest form for a caller on a
    latency-sensitive path. Any other buffer is read as integers."""
    if isinstance(instruments, (bytes, bytearray)) or (
            isinstance(instruments, memoryview) and instruments.format in ("B", "b", "c")):
        packed = bytes(instruments)      # a copy unless it is bytes already
        if len(packed) % 8:
            raise ValueError(f"packed instrument keys must be a multiple of 8 bytes, not "
                             f"{len(packed)}")
        return packed
    if isinstance(instruments, np.ndarray):
        if instruments.dtype.kind not in "ui":
            raise ValueError(f"instruments must be integers, not {instruments.dtype}")
        if instruments.dtype.kind == "i" and instruments.size and instruments.min() < 0:
            raise ValueError("instruments must be integers in [0, 2**64)")
        return np.ascontiguousarray(instruments, dtype="<u8").tobytes()
    keys = instruments if isinstance(instruments, (list, tuple)) else list(instruments)
    st = _KEY_STRUCTS.get(len(keys))
    if st is None:
        st = _KEY_STRUCTS[len(keys)] = struct.Struct(f"<{len(keys)}Q")
    try:
        return st.pack(*keys)
    except struct.error as exc:
        raise ValueError(f"instruments must be integers in [0, 2**64): {exc}") from None


def _columns_from_rows(rows: list[tuple]) -> fmt.Columns:
    kind, version, conn, wall, mono, payload, inst = zip(*rows)
    n = len(rows)
    counts = np.fromiter((0 if x is None else len(x) >> 3 for x in inst), np.uint32, n)
    keys = b"".join([x for x in inst if x])
    return fmt.Columns(
        np.array(kind, dtype=np.uint8), np.array(version, dtype=np.uint8),
        np.array(conn, dtype=np.uint32), np.array(wall, dtype=np.int64),
        np.array(mono, dtype=np.int64), np.fromiter(map(len, payload), np.uint32, n),
        b"".join(payload), counts, np.frombuffer(keys, dtype="<u8"))


def _merge(parts: list, has_inst: bool) -> fmt.Columns:
    c = fmt.concat_columns([_columns_from_rows(p) if isinstance(p, list) else p
                            for p in parts])
    c.has_instruments = has_inst
    return c


class _SegmentFile:
    """The segment being written: an fd, its accounting, and its footer-to-be."""

    def __init__(self, path: Path, header: fmt.SegmentHeader, sync: bool):
        self.path = path
        self.day = None
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise WalIOError(path, exc.strerror or str(exc)) from None
        self.acc = FooterAccumulator()
        self.end = 0
        self.blocks = 0
        self.records = 0
        self.write(header.pack())
        if sync:
            os.fsync(self.fd)
            fsync_dir(path.parent)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.end)
            view = view[n:]
            self.end += n


class WalWriter:
    """Append records to ROOT/VENUE/DAY/STREAM/ segments from a background thread.

    ``tz`` sets the trading-day boundary (``layout.IST`` for Kite, ``layout.UTC`` for
    Binance). ``block_bytes`` is the payload size at which a block is sealed,
    ``flush_interval`` the age (seconds) at which a partial block is sealed anyway,
    ``segment_bytes`` the size past which the next block goes to a new segment,
    ``queue_blocks`` how many sealed blocks may wait for the disk before append blocks.
    ``codec``: None for the best available (tick_delta when built, else plain).
    ``level``: the zstd level while the writer keeps up; behind (``BEHIND_BLOCKS`` sealed
    blocks waiting), it compresses at ``FAST_LEVEL`` until it has caught up
    (``stats.fast_blocks`` counts those blocks). Each segment's footer records ``level``.
    ``compact``: a background thread compacts each segment the writer closes (and each one
    recovery closed) into large blocks (``wal.compact``): a writer that seals small blocks
    for durability leaves a log that is compact and fast to replay. ``close`` waits for it.
    """

    def __init__(self, root, venue: str, stream: str = "ticks", tz=layout.UTC, *,
                 fsync="interval:1000", block_bytes: int = DEFAULT_BLOCK_BYTES,
                 flush_interval: float = 1.0, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 queue_blocks: int = 64, codec: int | None = None, level: int = 1,
                 on_durable=None, recover: bool = True, compact: bool = False):
        if not venue or "/" in venue or venue.startswith("."):
            raise ConfigError(f"venue {venue!r} is not a directory name")
        if stream not in ("ticks", "snapshots") and ("/" in stream or not stream):
            raise ConfigError(f"stream {stream!r} is not a directory name")
        # Each segment header holds both names (32 and 16 bytes of UTF-8): checked here, not
        # when the first block is written on the writer thread.
        if len(venue.encode()) > 32 or len(stream.encode()) > 16:
            raise ConfigError(f"venue {venue!r} or stream {stream!r} is too long: at most 32 "
                              "and 16 bytes")
        if block_bytes < 1 or segment_bytes < fmt.HEADER_SIZE or queue_blocks < 1:
            raise ConfigError("block_bytes, segment_bytes and queue_blocks must be positive")
        self.root = Path(root)
        self.venue, self.stream = venue, stream
        self.tz_offset_s = layout.tz_offset_seconds(tz)
        self._tz_offset_ns = self.tz_offset_s * 1_000_000_000
        self.policy = FsyncPolicy.parse(fsync)
        self.block_bytes, self.flush_interval = int(block_bytes), float(flush_interval)
        # The writer thread waits up to flush_interval at a time, idle or not.
        if not 0 < self.flush_interval <= threading.TIMEOUT_MAX:
            raise ConfigError(f"flush_interval={flush_interval!r}: use seconds, more than 0")
        self.segment_bytes, self.queue_blocks = int(segment_bytes), int(queue_blocks)
        self.codec = fmt.default_codec() if codec is None else int(codec)
        if self.codec not in fmt.CODEC_NAMES or (self.codec == fmt.CODEC_TICK_DELTA
                                                 and not fmt.tick_delta_available()):
            raise ConfigError(f"codec {codec} is not available")
        try:
            level = operator.index(level) if not isinstance(level, bool) else None
        except TypeError:
            level = None
        if not fmt.is_level(level):
            raise ConfigError(f"level: a zstd level is an integer from {fmt.MIN_LEVEL} to "
                              f"{fmt.MAX_LEVEL}")
        self.level = level
        self.on_durable = on_durable
        self.stats = WriterStats()
        self.recovery: list[RepairReport] = []

        self._venue_dir = self.root / venue
        try:
            self._venue_dir.mkdir(parents=True, exist_ok=True)
            lock_path = self._venue_dir / f".{stream}.lock"
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WalIOError(getattr(exc, "filename", None) or self._venue_dir,
                             exc.strerror or str(exc)) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise WalLockedError(lock_path) from None
        try:
            if recover:
                self.recovery = recover_stream(self.root, venue, stream)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.compactor: Compactor | None = None
        self._own_segments: set[Path] = set()

        self._mutex = threading.RLock()
        self._cv = threading.Condition(self._mutex)   # same lock: hold either, hold both
        self._rows: list[tuple] = []     # single appends not yet turned into a part
        self._parts: list = []           # lists of rows and Columns chunks, in order
        self._open_count = 0
        self._open_bytes = 0
        self._open_since = 0.0
        self._open_inst = False
        self._day: int | None = None     # trading day of the open block (never decreases)
        self._sealed: deque[_Sealed] = deque()
        self._appended = 0
        self._written = 0
        self._durable = 0
        self._sync_wanted = 0            # flush(): fsync through at least this record
        self._writer_polls = False       # the writer thread looks at the queue every POLL_S
        self._closing = False
        self._closed = False
        self._error: WalError | None = None
        self._last_full_log = 0.0
        self._seg: _SegmentFile | None = None
        self._deferred = None            # a signal handler's work, postponed out of the lock
        # The threads last: nothing before them can fail and leave them running.
        if compact:
            self.compactor = Compactor(self.level, name=f"wal-compact-{venue}-{stream}",
                                       on_done=self._compacted)
            for report in self.recovery:
                if report.action == "footer rebuilt":
                    self.compactor.submit(report.path)
        self._thread = threading.Thread(target=self._run, name=f"wal-{venue}-{stream}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ capture side

    @property
    def durable_records(self) -> int:
        """Records 0..durable_records-1 are fsynced (in a segment and its directory)."""
        return self._durable

    @property
    def written_records(self) -> int:
        """Records handed to the OS (survive the process being killed, not power loss)."""
        return self._written

    @property
    def appended_records(self) -> int:
        return self._appended

    @property
    def error(self) -> WalError | None:
        return self._error

    def append(self, kind: int, payload: bytes, wall_ns: int, mono_ns: int, conn: int = 0,
               instruments=None, version: int | None = None) -> int:
        """Queue one record; returns its sequence number (0 for this writer's first).
        ``instruments``: the instrument keys (ints, an integer array, or bytes of
        little-endian u64) this record concerns, or None."""
        # This runs between a message's receipt and its append on the capture loop, mostly
        # with cold caches, so it keeps to few steps: the common forms are tested first and
        # the lock is the condition's RLock entered directly (Condition.__enter__ is Python).
        if version is None:
            version = RECORD_VERSION.get(kind, 1)
        if type(payload) is not bytes:
            payload = bytes(payload)
        if instruments is not None and (type(instruments) is not bytes or len(instruments) & 7):
            # Packed to bytes here: a copy (the caller may reuse its buffer), and a bad key is
            # the caller's ValueError, not a dead writer thread.
            instruments = _pack_keys(instruments)
        day = (wall_ns + self._tz_offset_ns) // layout.DAY_NS
        with self._mutex:
            if self._error is not None or self._closed:
                self._check()
            if day != self._day:
                self._enter_day(day)
            if not self._open_count:
                self._open_since = time.monotonic()   # the writer thread times the block
            # One list.append: a signal handler running between bytecodes sees either the
            # whole record or none of it.
            self._rows.append((kind, version, conn, wall_ns, mono_ns, payload, instruments))
            if instruments is not None:
                self._open_inst = True
            self._open_count += 1
            self._open_bytes += len(payload)
            seq = self._appended
            self._appended = seq + 1
            self.stats.appended_records = seq + 1
            if self._open_bytes >= self.block_bytes:
                self._seal()
        if self._deferred is not None:
            self._run_deferred()
        return seq

    def append_batch(self, kinds, payloads, lengths, wall_ns, mono_ns, conns=0,
                     instruments=None, instrument_counts=None, versions=None) -> int:
        """Queue many records at once, column-wise (no Python object per record).

        ``payloads``: the payloads back to back (bytes-like); ``lengths``: u32 per record.
        ``kinds``/``conns``/``versions``: arrays or scalars. ``instruments``: instrument keys
        of all records back to back, ``instrument_counts`` how many belong to each record.
        Returns the sequence number of the first record."""
        lengths = np.array(lengths, dtype=np.uint32, copy=True).ravel()
        n = len(lengths)
        wall = np.array(wall_ns, dtype=np.int64, copy=True).ravel()
        mono = np.array(mono_ns, dtype=np.int64, copy=True).ravel()
        kinds_a = np.array(np.broadcast_to(np.asarray(kinds, dtype=np.uint8), (n,)))
        conns_a = np.array(np.broadcast_to(np.asarray(conns, dtype=np.uint32), (n,)))
        if versions is None:
            versions_a = _DEFAULT_VERSIONS[kinds_a]
        else:
            versions_a = np.array(np.broadcast_to(np.asarray(versions, dtype=np.uint8), (n,)))
        data = payloads if isinstance(payloads, bytes) else bytes(payloads)
        view = memoryview(data)   # slices of it share the (immutable) bytes
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(wall) != n or len(mono) != n or int(offsets[-1]) != len(data):
            raise ValueError("append_batch: column lengths disagree (wall_ns, mono_ns and "
                             "lengths need one entry per record; lengths must sum to the "
                             "payload size)")
        has_inst = instruments is not None
        if has_inst:
            keys = np.array(instruments, dtype=np.uint64, copy=True).ravel()
            counts = np.array(instrument_counts, dtype=np.uint32, copy=True).ravel()
            if len(counts) != n or int(counts.sum()) != len(keys):
                raise ValueError("append_batch: instrument_counts must have one entry per "
                                 "record and sum to len(instruments)")
            key_off = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=key_off[1:])
        else:
            keys, counts, key_off = np.zeros(0, np.uint64), np.zeros(n, np.uint32), None
        days = (wall + self.tz_offset_s * 1_000_000_000) // layout.DAY_NS
        with self._cv:
            self._check()
            first_seq = self._appended
            if n == 0:
                return first_seq
            i = 0
            base_day = self._day if self._day is not None else int(days[0])
            days = np.maximum.accumulate(np.maximum(days, base_day))
            while i < n:
                day = int(days[i])
                self._enter_day(day)
                run_end = int(np.searchsorted(days, day, side="right"))
                room = self.block_bytes - self._open_bytes
                # records i..j-1 fit in the open block (at least one goes in)
                j = int(np.searchsorted(offsets, offsets[i] + room, side="right")) - 1
                j = max(min(j, run_end), i + 1)
                lo, hi = int(offsets[i]), int(offsets[j])
                if key_off is not None:
                    klo, khi = int(key_off[i]), int(key_off[j])
                    ck, cc = keys[klo:khi], counts[i:j]
                else:
                    ck, cc = keys, counts[i:j]
                chunk = fmt.Columns(kinds_a[i:j], versions_a[i:j], conns_a[i:j], wall[i:j],
                                    mono[i:j], lengths[i:j], view[lo:hi], cc, ck)
                if self._rows:
                    self._parts.append(self._rows)
                    self._rows = []
                if not self._open_count:
                    self._open_since = time.monotonic()
                self._parts.append(chunk)
                self._open_inst |= has_inst
                self._open_count += j - i
                self._open_bytes += hi - lo
                self._appended += j - i
                self.stats.appended_records = self._appended
                if self._open_bytes >= self.block_bytes:
                    self._seal()
                i = j
        if self._deferred is not None:
            self._run_deferred()
        return first_seq

    def flush(self, timeout: float | None = None) -> int:
        """Seal the open block and wait until everything appended so far is written and
        fsynced. Returns durable_records."""
        with self._cv:
            self._check()
            target = self._appended
            if self._open_count:
                self._seal(wait=False)
            self._sync_wanted = max(self._sync_wanted, target)
            self._cv.notify_all()
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._durable < target and self._error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cv.wait(left)
            self._check()
            return self._durable

    def close(self) -> None:
        """Write what is queued, the footer, fsync, release the lock. Raises the writer
        thread's error, if it had one. Safe to call twice and from a signal handler."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            if self._open_count and self._error is None:
                self._seal(wait=False)
            self._closing = True
            self._cv.notify_all()
        self._thread.join()
        try:
            os.close(self._lock_fd)
        except OSError:
            pass
        if self.compactor is not None:
            self.compactor.close()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "WalWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            try:
                self.close()
            except WalError as err:
                log.error("WAL close after an error: %s", err)

    # ------------------------------------------------------------------ internals

    def _compacted(self, report) -> None:     # the compactor's thread
        if report.path not in self._own_segments:   # one recovery closed: not in the stats
            return
        self.stats.segments_compacted += 1
        self.stats.compaction_saved_bytes += report.stored_before - report.stored_after

    def _run_deferred(self) -> None:
        work, self._deferred = self._deferred, None
        if work is not None:
            work()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise WalError(f"WAL writer for {self._venue_dir}/{self.stream} is closed")

    def _enter_day(self, day: int) -> None:
        """Records of trading day ``day`` come next (lock held): a later day seals the open
        block, so that no block spans two days; an earlier one (the clock stepped back) stays
        in the current day, which never decreases."""
        if self._day is None:
            self._day = day
        elif day > self._day:
            if self._open_count:
                self._seal()
            self._day = day

    def _seal(self, wait: bool = True) -> None:
        """Move the open block to the queue (lock held). ``wait``: apply backpressure."""
        if self._rows:
            self._parts.append(self._rows)
            self._rows = []
        blk = _Sealed(self._parts, self._day, self._appended - self._open_count,
                      self._open_count, self._open_bytes, self._open_inst)
        self._parts = []
        self._open_count = self._open_bytes = 0
        self._open_inst = False
        # Queue first, then wait for room: a block sealed is never lost, even if a signal
        # handler closes the writer while this thread waits.
        self._sealed.append(blk)
        # Waking the writer thread costs the appender a futex call (some 25 us with cold
        # caches, on capture's receipt-to-append path). While a block is open the thread
        # looks at the queue every POLL_S anyway, so a slow stream's block (one that took
        # longer than that to fill) is left for it to find; a sleeping thread, a backlog or
        # a fast stream's block is woken for at once, so throughput never waits on a poll.
        if (not wait or not self._writer_polls or len(self._sealed) > 1
                or time.monotonic() - self._open_since < POLL_S):
            self._cv.notify_all()
        if wait and len(self._sealed) > self.queue_blocks and self._error is None:
            self.stats.queue_full_waits += 1
            start = time.monotonic()
            if start - self._last_full_log > 5.0:
                self._last_full_log = start
                log.warning("WAL %s/%s: write queue full (%d blocks); capture is waiting "
                            "for the disk (%d waits so far)", self.venue, self.stream,
                            self.queue_blocks, self.stats.queue_full_waits)
            while (len(self._sealed) > self.queue_blocks and self._error is None
                   and not self._closing):
                self._cv.wait()
            self.stats.queue_full_seconds += time.monotonic() - start

    def _run(self) -> None:
        try:
            cctx = zstandard.ZstdCompressor(level=self.level)
            fast = (zstandard.ZstdCompressor(level=FAST_LEVEL) if self.level > FAST_LEVEL
                    else cctx)
        except Exception as exc:    # a MemoryError, say: appends must see it, not wait
            self._fail(exc)
            return
        last_sync = time.monotonic()
        unsynced = False
        while True:
            with self._cv:
                while True:
                    now = time.monotonic()
                    if self._sealed or self._closing:
                        break
                    if self._sync_wanted > self._durable and self._written >= self._sync_wanted:
                        break
                    # Appends do not wake this thread for a block's first record, nor for a
                    # slow stream's block sealed while it polls (see _seal). Idle, it wakes every
                    # flush_interval: a block's deadline, its first record plus
                    # flush_interval, is never before the next wake-up. While a block is
                    # open it polls every POLL_S for blocks sealed meanwhile.
                    wait = self.flush_interval
                    self._writer_polls = False
                    if self._open_count:
                        age = now - self._open_since
                        if age >= self.flush_interval:
                            self._seal(wait=False)
                            break
                        wait = min(self.flush_interval - age, POLL_S)
                        self._writer_polls = True
                    if unsynced and self.policy.mode == "interval":
                        due = last_sync + self.policy.interval - now
                        if due <= 0:
                            break
                        wait = min(wait, due)
                    self._cv.wait(wait)
                self._writer_polls = False
                batch = list(self._sealed)
                self._sealed.clear()
                closing = self._closing and not batch
                want_sync = self._sync_wanted
                self._cv.notify_all()
            try:
                for i, blk in enumerate(batch):
                    # Blocks behind this one: the rest of the batch, and any sealed since
                    # (read without the lock: a hint, not a count to rely on).
                    behind = len(batch) - i - 1 + len(self._sealed)
                    if behind >= BEHIND_BLOCKS and fast is not cctx:
                        self.stats.fast_blocks += 1
                        self._write_block(blk, fast)
                    else:
                        self._write_block(blk, cctx)
                    unsynced = True
                    if self.policy.mode == "every-block":
                        self._sync()
                        unsynced = False
                now = time.monotonic()
                if (want_sync > self._durable
                        or (unsynced and self.policy.mode == "interval"
                            and now - last_sync >= self.policy.interval)):
                    self._sync()
                    unsynced = False
                    last_sync = now
                if closing:
                    self._close_segment()
                    self._publish_durable(self._written)
                    return
            except Exception as exc:    # OSError, WalError, or a bug: never die silently
                self._fail(exc)
                return

    def _publish_durable(self, n: int) -> None:
        with self._cv:
            if n > self._durable:
                self._durable = n
                self._cv.notify_all()
                grew = True
            else:
                grew = False
        if grew and self.on_durable is not None:
            try:
                self.on_durable(n)
            except Exception:  # a callback's bug must not stop the log
                log.exception("WAL on_durable callback failed")

    def _sync(self) -> None:
        seg = self._seg
        if seg is not None:
            os.fsync(seg.fd)
            self._check_linked(seg)
            self.stats.fsyncs += 1
        self._publish_durable(self._written)

    def _check_linked(self, seg: _SegmentFile) -> None:
        if os.fstat(seg.fd).st_nlink == 0:
            raise WalIOError(seg.path, "segment file was deleted (or its directory removed) "
                                       "while being written")

    def _write_block(self, blk: _Sealed, cctx) -> None:
        cols = _merge(blk.parts, blk.has_inst)
        seg = self._seg
        if seg is not None and (seg.day != blk.day or seg.end >= self.segment_bytes):
            self._close_segment()
            seg = None
        if seg is None:
            seg = self._open_segment(blk.day)
        body, raw_len = fmt.compress_block(cols, self.codec, cctx)
        if seg.blocks and seg.end + fmt.FRAME_SIZE + len(body) > self.segment_bytes:
            self._close_segment()
            seg = self._open_segment(blk.day)
        frame = fmt.block_frame(cols, self.codec, seg.blocks, seg.records, body, raw_len) + body
        start = seg.end
        try:
            seg.write(frame)
        except OSError:
            seg.end = start
            try:
                os.ftruncate(seg.fd, start)   # the segment ends at its last good block
            except OSError:
                pass
            raise
        seg.acc.add(start, len(frame), cols)
        seg.blocks += 1
        seg.records += len(cols.kind)
        self.stats.blocks_written += 1
        self.stats.written_records += len(cols.kind)
        self.stats.bytes_written += len(frame)
        self.stats.payload_bytes += len(cols.payloads)
        with self._cv:
            self._written += blk.count
            self._cv.notify_all()
        if self.policy.mode == "never" or self.policy.mode == "on-rotate":
            self._check_linked(seg)

    def _open_segment(self, day: int) -> _SegmentFile:
        directory = layout.stream_dir(self.root, self.venue, day, self.stream)
        try:
            if not self._venue_dir.is_dir():
                raise FileNotFoundError(2, "directory vanished", str(self._venue_dir))
            created = not directory.is_dir()
            directory.parent.mkdir(exist_ok=True)
            directory.mkdir(exist_ok=True)
            if created and self.policy.mode != "never":   # make the new directories durable
                fsync_dir(directory.parent)
                fsync_dir(self._venue_dir)
            existing = layout.segments_in(directory)
        except OSError as exc:
            raise WalIOError(exc.filename or directory, exc.strerror or str(exc)) from None
        number = int(existing[-1].stem) + 1 if existing else 1
        path = directory / layout.segment_name(number)
        header = fmt.SegmentHeader(number, time.time_ns(), layout.day_int(day),
                                   self.tz_offset_s, self.venue, self.stream)
        seg = _SegmentFile(path, header, self.policy.mode != "never")
        seg.day = day
        self._seg = seg
        self.stats.segments_opened += 1
        return seg

    def _close_segment(self) -> None:
        seg = self._seg
        if seg is None:
            return
        self._seg = None
        footer = seg.acc.footer()
        footer.level = self.level
        offset = seg.end
        seg.write(footer_bytes(footer, offset, seg.blocks))
        os.fsync(seg.fd)
        self._check_linked(seg)
        self.stats.fsyncs += 1
        os.close(seg.fd)
        self._publish_durable(self._written)
        if self.compactor is not None:
            self._own_segments.add(seg.path)
            self.compactor.submit(seg.path)

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, WalError):
            err = exc
        elif not isinstance(exc, OSError):
            log.exception("WAL writer thread failed")
            err = WalError(f"WAL writer for {self._venue_dir}/{self.stream} failed: {exc!r}")
        else:
            path = getattr(exc, "filename", None) or (self._seg.path if self._seg else
                                                      self._venue_dir)
            err = WalIOError(path, exc.strerror or str(exc))
        log.error("WAL writer stopped: %s", err)
        seg = self._seg
        if seg is not None:
            try:
                os.close(seg.fd)
            except OSError:
                pass
            self._seg = None
        with self._cv:
            self._error = err
            self._sealed.clear()
            self._cv.notify_all()


def recover_stream(root, venue: str, stream: str) -> list[RepairReport]:
    """Repair the newest segment of the newest day of ``venue``/``stream`` if it has no
    footer (what a crashed writer leaves). The caller must hold the stream's lock (WalWriter
    does)."""
    venue_dir = Path(root) / venue
    days = sorted(p for p in venue_dir.iterdir() if p.is_dir() and (p / stream).is_dir())
    reports = []
    for day in days[-1:]:
        # Only the newest segment can be a crashed writer's (each one is closed before the
        # next is made); an older one that is not closed lost its end later, and repairing
        # it would hide that. Readers and verify report it.
        for path in layout.segments_in(day / stream)[-1:]:
            try:
                seg_state = open_segment(path).state
            except WalError:
                seg_state = "unreadable"
            if seg_state == "closed":
                continue
            try:
                report = repair_segment(path)
            except WalFormatError as err:
                # Not a segment at all (bad magic, a newer format): keep it untouched and go
                # on recording after it; refusing to capture would lose the live data too.
                report = RepairReport(path, "left as is", reason=f"{err}; move it aside")
            if report is not None:
                reports.append(report)
                if report.action == "left as is":
                    log.error("WAL recovery: %s", report)
    return reports


def close_on_signals(writer: WalWriter, signals=(signal.SIGINT, signal.SIGTERM)) -> None:
    """On SIGINT/SIGTERM, close ``writer`` cleanly (queued blocks, footer, fsync), then behave
    as the signal normally would: a previous Python handler is called, otherwise SIGINT raises
    KeyboardInterrupt and SIGTERM raises SystemExit(128 + 15). Call from the main thread.

    A signal that arrives while the main thread is inside ``append`` is handled as soon as
    that append has released the writer's lock, so the record is never half-queued."""
    previous = {}

    def finish(signum, frame):
        try:
            writer.close()
        except WalError as err:
            log.error("WAL close on signal %d: %s", signum, err)
        prev = previous.get(signum)
        signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
        if callable(prev) and prev is not signal.default_int_handler:
            prev(signum, frame)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def handler(signum, frame):
        if writer._cv._is_owned():       # interrupted inside append: finish it first
            writer._deferred = lambda: finish(signum, None)
            return
        finish(signum, frame)

    for s in signals:
        previous[s] = signal.signal(s, handler)
