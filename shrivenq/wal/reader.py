"""Reading the WAL: whole blocks decoded into numpy columns, in append order.

    from shrivenq.wal import WalReader
    for batch in WalReader("data/kite", start_ns=t0, end_ns=t1, instruments=[256265]):
        batch.wall_ns, batch.kind, batch.conn       # numpy arrays, one row per record
        batch.payload(i)                            # record i's bytes, exactly as received

A segment without a footer (still being written, or left by a crash) is read up to its last
good block. A block that fails its checksum or does not decode raises WalCorruptError (segment,
offset, block) with ``on_corrupt="raise"``; with ``"skip"`` it is left out and listed in
``reader.skipped``. So is data lost in ways no crash explains, where what it held could fall
in the time range read: a segment missing from its directory's numbering, a file that is
not a segment (bad magic), and a segment without a footer that is not its directory's
newest (a writer closes each segment before making the next, and the next writer's
recovery closes a crashed one's). Nothing is ever returned that did not verify.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import zstandard

from shrivenq.errors import ConfigError, WalCorruptError, WalError, WalIOError
from shrivenq.wal import format as fmt
from shrivenq.wal import layout
from shrivenq.wal.records import CONTROL_KINDS
from shrivenq.wal.segment import (
    BlockRef, Problem, Segment, open_segment, open_segment_held, read_block)

#: One row per record, as ``RecordBatch.records`` returns them.
RECORD_DTYPE = np.dtype([("kind", "u1"), ("version", "u1"), ("conn", "<u4"),
                         ("wall_ns", "<i8"), ("mono_ns", "<i8"), ("offset", "<u8"),
                         ("length", "<u4")])

_CONTROL = np.zeros(256, dtype=bool)
_CONTROL[CONTROL_KINDS.start:CONTROL_KINDS.stop] = True


class Record(NamedTuple):
    kind: int
    version: int
    conn: int
    wall_ns: int
    mono_ns: int
    payload: bytes
    instruments: tuple[int, ...]


class _Starts:
    """A RecordBatch column made when first read: where each record's run of ``counts``
    starts (payload bytes, instrument keys). Replay reads neither for most blocks."""

    def __init__(self, counts: str):
        self.counts = counts

    def __set_name__(self, owner, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, batch, owner=None):
        if batch is None:
            return self
        starts = getattr(batch, self.slot)
        if starts is None:
            counts = getattr(batch, self.counts)
            starts = np.zeros(len(counts), dtype=np.uint64)
            if len(counts):
                np.cumsum(counts[:-1], out=starts[1:])
            setattr(batch, self.slot, starts)
        return starts

    def __set__(self, batch, value) -> None:
        setattr(batch, self.slot, value)


class RecordBatch:
    """Records of one block (after filtering), column-wise.

    ``kind``, ``version``, ``conn``, ``wall_ns``, ``mono_ns``, ``length``: one entry per
    record. ``data`` holds the block's payloads back to back; record i's bytes are
    ``data[offset[i]:offset[i] + length[i]]``. Instrument keys of record i are
    ``inst_keys[inst_offset[i]:inst_offset[i] + inst_count[i]]``. ``data`` is bytes-like
    (bytes or a memoryview of the decoded block); ``payload(i)`` returns bytes."""

    __slots__ = ("kind", "version", "conn", "wall_ns", "mono_ns", "length", "_offset", "_data",
                 "inst_keys", "_inst_offset", "inst_count", "segment", "block", "first_record",
                 "prepared")

    def __init__(self, cols: fmt.Columns, segment: Path | None = None, block: int = -1,
                 first_record: int = 0, prepared=None):
        self.kind, self.version, self.conn = cols.kind, cols.version, cols.conn
        self.wall_ns, self.mono_ns, self.length = cols.wall_ns, cols.mono_ns, cols.length
        self._offset = self._inst_offset = None    # made when first asked for
        self.data = cols.payloads
        self.inst_keys = cols.inst_keys
        self.inst_count = cols.inst_count
        self.segment, self.block, self.first_record = segment, block, first_record
        self.prepared = prepared

    offset = _Starts("length")
    inst_offset = _Starts("inst_count")

    @property
    def data(self):
        # Payloads a reader's ``prepare`` left packed are unpacked on first use: a batch
        # whose frames were decoded straight to rows mostly needs none of them.
        if isinstance(self._data, fmt.PackedPayloads):
            self._data = self._data.unpack()
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data = value

    def __len__(self) -> int:
        return len(self.kind)

    def payload(self, i: int) -> bytes:
        o = int(self.offset[i])
        if isinstance(self._data, fmt.PackedPayloads):
            own = self._data.verbatim(o, int(self.length[i]))
            if own is not None:
                return own
        return bytes(self.data[o:o + int(self.length[i])])

    def payloads(self) -> list[bytes]:
        """Every payload as its own bytes object (convenience; one object per record)."""
        data = self.data
        return [bytes(data[o:o + n]) for o, n in zip(self.offset.tolist(),
                                                     self.length.tolist())]

    def instruments(self, i: int) -> np.ndarray:
        o = int(self.inst_offset[i])
        return self.inst_keys[o:o + int(self.inst_count[i])]

    @property
    def records(self) -> np.ndarray:
        """The columns as one structured array (RECORD_DTYPE)."""
        out = np.empty(len(self), dtype=RECORD_DTYPE)
        for name in RECORD_DTYPE.names:
            out[name] = getattr(self, name)
        return out

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield Record(int(self.kind[i]), int(self.version[i]), int(self.conn[i]),
                         int(self.wall_ns[i]), int(self.mono_ns[i]), self.payload(i),
                         tuple(self.instruments(i).tolist()))

    def select(self, mask: np.ndarray) -> "RecordBatch":
        """The records where ``mask`` is true (payload bytes are shared, not copied)."""
        out = RecordBatch.__new__(RecordBatch)
        for name in ("kind", "version", "conn", "wall_ns", "mono_ns", "length", "offset",
                     "inst_offset", "inst_count"):
            setattr(out, name, getattr(self, name)[mask])
        out.data, out.inst_keys = self._data, self.inst_keys
        out.segment, out.block, out.first_record = self.segment, self.block, self.first_record
        out.prepared = None     # made for the records before this selection
        return out


def _gather_index(offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Indices of the spans [offsets[i], offsets[i] + counts[i]) back to back."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return (np.repeat(offsets.astype(np.int64) - (ends - counts), counts)
            + np.arange(total, dtype=np.int64))


def concat(batches: list[RecordBatch]) -> RecordBatch:
    """One batch holding all of ``batches`` (payloads copied into one buffer)."""
    payloads, keys = [], []
    for b in batches:
        total = int(b.length.sum(dtype=np.uint64))
        if total == len(b.data) and (len(b) == 0 or int(b.offset[0]) == 0) and np.array_equal(
                b.offset[1:], np.cumsum(b.length[:-1], dtype=np.uint64)):
            payloads.append(b.data)
        else:
            buf = np.frombuffer(b.data, dtype=np.uint8)
            payloads.append(buf[_gather_index(b.offset, b.length)].tobytes())
        keys.append(b.inst_keys[_gather_index(b.inst_offset, b.inst_count)])

    def cat(name, dtype):
        arrs = [getattr(b, name) for b in batches]
        return np.concatenate(arrs).astype(dtype, copy=False) if arrs else np.zeros(0, dtype)

    cols = fmt.Columns(cat("kind", np.uint8), cat("version", np.uint8), cat("conn", np.uint32),
                       cat("wall_ns", np.int64), cat("mono_ns", np.int64),
                       cat("length", np.uint32), b"".join(payloads),
                       cat("inst_count", np.uint32),
                       np.concatenate(keys) if keys else np.zeros(0, np.uint64))
    return RecordBatch(cols)


@dataclass
class TornTail:
    segment: Path
    offset: int
    bytes: int

    def __str__(self) -> str:
        return (f"{self.segment}: {self.bytes} bytes after the last good block (byte "
                f"{self.offset}) are a torn write; not read")


class _Unreadable(Problem):
    """A file named like a segment that cannot be opened as one; raises its own error."""

    def __init__(self, segment, offset, block, reason, err: WalError):
        super().__init__(segment, offset, block, reason)
        self.err = err

    def error(self) -> WalError:
        return self.err

    def __str__(self) -> str:
        return f"{self.err} (not read)"


def _first_wall(seg) -> int | None:
    return seg.blocks[0].frame.min_wall_ns if isinstance(seg, Segment) and seg.blocks else None


def _day_start_ns(seg) -> int | None:
    """Wall time at which the trading day of a segment's directory began (its header's day,
    at its offset); None if unknown."""
    h = seg.header if isinstance(seg, Segment) else None
    if h is None or not h.day:
        return None
    try:
        day = layout.day_from_int(h.day)
    except ValueError:
        return None
    return (day * 86_400 - h.tz_offset_s) * 1_000_000_000


def _last_wall(seg) -> int | None:
    return (max(b.frame.max_wall_ns for b in seg.blocks)
            if isinstance(seg, Segment) and seg.blocks else None)


def default_workers() -> int:
    """Block-decoding threads when a caller does not say: two where this process may run on
    two cores or more (zstd and the tick codec release the GIL, so decoding the next blocks
    overlaps whatever consumes this one), else one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return 2 if cores >= 2 else 1


class WalReader:
    """Iterate the records of one venue/stream in append order, across segments and days.

    ``path``: a venue directory (ROOT/VENUE), a day or stream directory, or one segment file.
    ``stream``: "ticks" (default when ``path`` holds several streams) or "snapshots".
    ``start_ns``/``end_ns``: keep records with start_ns <= wall_ns < end_ns; blocks entirely
    outside are skipped using the footer index (or frame headers) without being read.
    ``instruments``: keep records whose instrument keys include any of these; control records
    are kept too unless ``control=False``. ``kinds``: keep only these record kinds.
    ``on_corrupt``: "raise" (default) or "skip". ``workers``: threads decoding blocks ahead
    of the consumer (zstd and the tick codec release the GIL); order is unchanged. None
    (the default) is ``default_workers()``: 2 on a machine with two cores or more, else 1.

    ``prepare``: called with each block's decoded ``Columns`` in the thread that decoded it;
    what it returns is the batch's ``prepared`` (None for a batch the filters cut down).
    With ``prepare``, a tick_delta block's payloads reach it packed (``PackedPayloads``):
    it may decode them its own way, and set ``checked`` if it checked them as strictly as
    unpacking does. A ValueError it raises is reported as a damaged block; payloads it left
    unchecked are unpacked (and so checked) before the batch is handed on."""

    def __init__(self, path, stream: str | None = None, *, start_ns: int | None = None,
                 end_ns: int | None = None, instruments=None, kinds=None,
                 on_corrupt: str = "raise", control: bool = True, workers: int | None = None,
                 prepare=None):
        if on_corrupt not in ("raise", "skip"):
            raise ConfigError(f"on_corrupt={on_corrupt!r}: use 'raise' or 'skip'")
        self.path = Path(path)
        paths = layout.find_segments(self.path, stream)
        groups = sorted({layout.stream_key(p) for p in paths})
        if len(groups) > 1 and stream is None:
            paths = [p for p in paths if layout.stream_key(p)[1] == "ticks"]
            groups = sorted({layout.stream_key(p) for p in paths})
        if len(groups) > 1:
            raise ConfigError(f"{self.path} holds several venues or streams "
                              f"({', '.join('/'.join(g) for g in groups)}); open one venue "
                              f"directory and name the stream")
        self.segment_paths = paths
        self.start_ns, self.end_ns = start_ns, end_ns
        self.instruments = (None if instruments is None
                            else np.unique(np.asarray(instruments, dtype=np.uint64)))
        self.kinds = None if kinds is None else np.asarray(list(kinds), dtype=np.uint8)
        self.control = control
        self.on_corrupt = on_corrupt
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.prepare = prepare
        self.skipped: list[Problem] = []
        self.torn: list[TornTail] = []
        self.blocks_read = 0
        self.blocks_skipped_by_time = 0

    def _block_in_range(self, ref: BlockRef) -> bool:
        f = ref.frame
        if self.start_ns is not None and f.max_wall_ns < self.start_ns:
            return False
        if self.end_ns is not None and f.min_wall_ns >= self.end_ns:
            return False
        return True

    def _filter(self, batch: RecordBatch) -> RecordBatch:
        mask = None
        if self.start_ns is not None:
            mask = batch.wall_ns >= self.start_ns
        if self.end_ns is not None:
            m = batch.wall_ns < self.end_ns
            mask = m if mask is None else mask & m
        if self.kinds is not None:
            m = np.isin(batch.kind, self.kinds)
            mask = m if mask is None else mask & m
        if self.instruments is not None:
            hit = np.isin(batch.inst_keys, self.instruments)
            m = np.zeros(len(batch), dtype=bool)
            rows = np.repeat(np.arange(len(batch)), batch.inst_count.astype(np.int64))
            m[rows[hit]] = True
            if self.control:
                m |= _CONTROL[batch.kind]
            mask = m if mask is None else mask & m
        if mask is None or mask.all():
            return batch
        return batch.select(mask)

    def _problem(self, p: Problem) -> None:
        if self.on_corrupt == "raise":
            raise p.error()
        self.skipped.append(p)

    def segments(self) -> Iterator[Segment]:
        for path in self.segment_paths:
            yield open_segment(path)

    def _opened(self, files: "_HeldFiles") -> Iterator[tuple[Path, Segment | WalError]]:
        """Each segment path with its Segment, or the error opening it raised; the file it
        classified is held in ``files`` for its blocks to be read from (compaction may
        replace the path meanwhile). A directory's newest segment that is gone by the time
        it is opened is left out: a writer's recovery or a repair removed what a crash left
        while creating it (it held nothing)."""
        newest = layout.newest_in_dirs(self.segment_paths)
        for path in self.segment_paths:
            try:
                seg, fd = open_segment_held(path)
                files.hold(path, fd)
                yield path, seg
            except WalIOError as err:
                if path in newest and not path.exists():
                    continue
                yield path, err
            except WalError as err:
                yield path, err

    def _segments_checked(self, files: "_HeldFiles"
                          ) -> Iterator[tuple[Path, Segment | None, list[Problem]]]:
        """Each segment path, its Segment (None if the file is not one) and the losses found
        before and in it that its blocks do not show: segments missing from the numbering
        before it, the file itself unreadable, and its end lost while later segments exist
        (no crash leaves that: recovery closes a crashed writer's segment before the next one
        is made). A loss is reported only if its records could fall in the time range read:
        the segments on either side (in any directory) bound its times."""
        newest = layout.newest_in_dirs(self.segment_paths)
        # One segment file named: no numbering to check.
        holes = {} if self.path.is_file() else layout.numbering_holes(self.segment_paths)
        opened = self._opened(files)
        current = next(opened, None)
        before_ns: int | None = None      # the last record time of the segments read so far
        while current is not None:
            following = next(opened, None)
            path, seg = current
            after_ns = _first_wall(following[1]) if following is not None else None
            found: list[Problem] = []
            first_ns = _first_wall(seg)
            # A hole at the start of a day's directory held records of that day, no earlier.
            hole_from = before_ns
            day_start = _day_start_ns(seg)
            if day_start is not None and (hole_from is None or hole_from < day_start):
                hole_from = day_start
            if path in holes and self._loss_in_range(hole_from,
                                                     first_ns if first_ns is not None else after_ns):
                first, count = holes[path]
                what = "it" if count == 1 else f"they ({count} segments up to {path.name})"
                found.append(Problem(path.parent / layout.segment_name(first), 0, -1,
                                     f"missing (deleted or lost); what {what} held is lost to "
                                     "this read"))
            if not isinstance(seg, Segment):
                if self._loss_in_range(before_ns, after_ns):
                    found.append(_Unreadable(path, 0, -1, "not readable", seg))
                yield path, None, found
                current = following
                continue
            last_ns = _last_wall(seg)
            if (seg.unclosed and path not in newest
                    and self._loss_in_range(last_ns if last_ns is not None else before_ns,
                                            after_ns)):
                found.append(Problem(path, seg.good_end, -1,
                                     f"{seg.lost_end()}; lost to this read"))
            if last_ns is not None:
                before_ns = last_ns
            yield path, seg, found
            current = following

    def _loss_in_range(self, before_ns: int | None, after_ns: int | None) -> bool:
        """Whether records lost between a record at ``before_ns`` and one at ``after_ns``
        (either unknown: None) may fall in the time range read."""
        if self.end_ns is not None and before_ns is not None and before_ns >= self.end_ns:
            return False
        if self.start_ns is not None and after_ns is not None and after_ns < self.start_ns:
            return False
        return True

    def __iter__(self) -> Iterator[RecordBatch]:
        return self.batches()

    def _plan(self, files: "_HeldFiles") -> Iterator[tuple]:
        """(segment, item, is_problem) in read order; blocks outside the time range are
        dropped here without being read. ``files`` holds each segment's file until its
        blocks in range are read (``files.use`` for each one handed out)."""
        for path, seg, found in self._segments_checked(files):
            if seg is None:
                for p in found:
                    yield path, p, True
                continue
            if seg.state == "torn" and not any(p.segment == path for p in found):
                self.torn.append(TornTail(seg.path, seg.good_end, seg.size - seg.good_end))
            items: list = [(p.offset, 1, p) for p in seg.problems + found]
            items += [(b.offset, 0, b) for b in seg.blocks]
            items.sort(key=lambda t: (t[0], t[1]))
            for _, is_problem, item in items:
                if not is_problem and not self._block_in_range(item):
                    self.blocks_skipped_by_time += 1
                    continue
                if not is_problem:
                    files.use(path)
                yield seg, item, is_problem
            files.planned(path)

    def batches(self) -> Iterator[RecordBatch]:
        """One RecordBatch per block that has records passing the filters. ``skipped``,
        ``torn`` and the block counters describe the latest iteration."""
        self.skipped, self.torn = [], []
        self.blocks_read = self.blocks_skipped_by_time = 0
        local = threading.local()
        files = _HeldFiles()

        def decode(seg: Segment, ref: BlockRef):
            dctx = getattr(local, "dctx", None)
            if dctx is None:
                dctx = local.dctx = zstandard.ZstdDecompressor()
            fd = files.get(seg.path)
            prepare = self.prepare
            try:
                cols = read_block(fd, ref, dctx, defer_unpack=prepare is not None)
                if prepare is None:
                    return cols, None
                try:
                    prepared = prepare(cols)
                    if isinstance(cols.payloads, fmt.PackedPayloads) and not cols.payloads.checked:
                        cols.payloads.unpack()
                except ValueError as exc:
                    raise WalCorruptError(ref.segment, ref.offset, ref.block, str(exc)) from None
                return cols, prepared
            except WalCorruptError as err:
                return err

        def finish(seg: Segment, ref: BlockRef, decoded) -> RecordBatch | None:
            if isinstance(decoded, WalCorruptError):
                self._problem(Problem(ref.segment, ref.offset, ref.block, decoded.reason))
                return None
            self.blocks_read += 1
            cols, prepared = decoded
            batch = self._filter(RecordBatch(cols, seg.path, ref.block, ref.frame.first_record,
                                             prepared))
            return batch if len(batch) else None

        try:
            if self.workers == 1:
                for seg, item, is_problem in self._plan(files):
                    if is_problem:
                        self._problem(item)
                        continue
                    decoded = decode(seg, item)
                    files.release(seg.path)
                    batch = finish(seg, item, decoded)
                    if batch is not None:
                        yield batch
                return
            with ThreadPoolExecutor(self.workers, thread_name_prefix="wal-read") as pool:
                pending: deque = deque()
                plan = self._plan(files)
                while True:
                    while len(pending) < 2 * self.workers:
                        try:
                            nxt = next(plan, None)
                        except Exception as exc:   # e.g. a later segment cannot be opened:
                            pending.append((None, exc, None))   # raised in its place, after
                            plan = iter(())                     # every record before it
                            break
                        if nxt is None:
                            break
                        seg, item, is_problem = nxt
                        fut = None if is_problem else pool.submit(decode, seg, item)
                        pending.append((seg, item, fut))
                    if not pending:
                        break
                    seg, item, fut = pending.popleft()
                    if seg is None:
                        raise item
                    if fut is None:
                        self._problem(item)
                        continue
                    decoded = fut.result()
                    files.release(seg.path)
                    batch = finish(seg, item, decoded)
                    if batch is not None:
                        yield batch
        finally:
            files.close_all()

    def read(self) -> RecordBatch:
        """Everything that passes the filters as one batch."""
        return concat(list(self.batches()))

    def records(self) -> Iterator[Record]:
        """One Record per record (convenient, slower: a Python object each)."""
        for batch in self.batches():
            yield from batch


class _HeldFiles:
    """The segment files one read holds open: each from its classification until the last of
    its blocks in range has been decoded (at once, if none is in range), so that a read of
    the last hour of many days holds two or three files, not one per segment. Blocks are
    read from the file classified even if compaction replaces the path meanwhile."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._pending: dict[Path, int] = {}     # blocks handed out, not yet decoded
        self._planned: set[Path] = set()        # every block in range handed out
        self._lock = threading.Lock()           # decoding threads call get()

    def hold(self, path: Path, fd: int) -> None:
        with self._lock:
            old = self._fds.pop(path, None)
            self._fds[path] = fd
            self._pending[path] = 0
            self._planned.discard(path)
        if old is not None:
            os.close(old)

    def get(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
        if fd is None:      # never: a block is handed out only from a held segment
            raise WalIOError(path, "segment file is not open")
        return fd

    def use(self, path: Path) -> None:
        with self._lock:
            self._pending[path] += 1

    def release(self, path: Path) -> None:
        with self._lock:
            self._pending[path] -= 1
        self._close_if_done(path)

    def planned(self, path: Path) -> None:
        with self._lock:
            if path not in self._fds:
                return
            self._planned.add(path)
        self._close_if_done(path)

    def _close_if_done(self, path: Path) -> None:
        with self._lock:
            if path not in self._planned or self._pending.get(path):
                return
            fd = self._fds.pop(path)
            self._planned.discard(path)
            del self._pending[path]
        os.close(fd)

    def close_all(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
            self._pending.clear()
            self._planned.clear()
        for fd in fds:
            os.close(fd)


def read_wal(path, stream: str | None = None, **kw) -> RecordBatch:
    """Shorthand for ``WalReader(path, stream, **kw).read()``."""
    return WalReader(path, stream, **kw).read()
