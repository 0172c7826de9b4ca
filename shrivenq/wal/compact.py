"""Compaction: rewrite a closed segment's records into large blocks.

A writer seals a block every ``flush_interval`` (capture: 1 s) so that a crash loses at most
that much. At Kite's one tick per instrument per second, such a block holds about one packet
per instrument, and tick_delta, which codes a packet against the same instrument's previous
packet *in its block*, has nothing to code against: on the replay bench's day the log is
2.7x the size of the compacted one and replay takes 4.4x its instructions
(docs/PERFORMANCE.md). Nothing is ever appended to a closed
segment, so its records can be re-blocked once it is closed: the same records in the same
order, every byte the same, in blocks of ``block_bytes`` of payloads.

Safe against a crash and against readers:

- The new segment is written beside the old as ``.NNNNNN.wal.compacting`` (a name no reader
  or writer takes for a segment), read back and compared with the old one column by column
  (streaming digests of every record field and payload), fsynced, renamed over the old file,
  and the directory fsynced. At every moment the segment is the old file or the new one,
  whole; a leftover temporary file is overwritten by the next compaction.
- The temporary file is ``flock``-ed while it is written: two compactors never race.
- A reader keeps open the file it classified (``WalReader``), so a segment replaced while it
  is read is read whole from the old file.

Only segments that are ``closed`` without a problem are compacted; anything else is left
exactly as it is (``CompactReport.skipped`` says why).
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import xxhash
import zstandard

from shrivenq.errors import WalError, WalIOError
from shrivenq.wal import format as fmt
from shrivenq.wal import layout
from shrivenq.wal.segment import (
    FooterAccumulator, Segment, classify, footer_bytes, fsync_dir, open_segment_held, read_block)

log = logging.getLogger("shrivenq.wal")

# Payload bytes per compacted block: 4 MiB holds about 22,000 full-mode Kite ticks. Larger
# blocks decode in fewer instructions a tick (about 835 against 917 at 1 MiB, 821 at 8 MiB)
# and compress better; durability no longer limits their size, and a seek reads at most
# one more block.
COMPACT_BLOCK_BYTES = 4 << 20

# A segment whose blocks already average this share of block_bytes is left alone: rewriting
# it would gain little.
_WORTHWHILE = 0.5

# Free disk space compaction leaves beyond its copy (at most the segment's size): the live
# writer on the same disk must never run out of room because of a compaction.
FREE_RESERVE_BYTES = 256 << 20

_COLUMNS = ("kind", "version", "conn", "wall_ns", "mono_ns", "length", "inst_count",
            "inst_keys")
_DTYPES = {"kind": "u1", "version": "u1", "conn": "<u4", "wall_ns": "<i8", "mono_ns": "<i8",
           "length": "<u4", "inst_count": "<u4", "inst_keys": "<u8"}


@dataclass
class CompactReport:
    path: Path
    compacted: bool
    skipped: str = ""           # why it was left alone
    records: int = 0
    blocks_before: int = 0
    blocks_after: int = 0
    bytes_before: int = 0       # file size
    bytes_after: int = 0
    stored_before: int = 0      # block frames only (the footer's stored_bytes)
    stored_after: int = 0
    seconds: float = 0.0
    failed: bool = False        # an error stopped it (``skipped`` says which); left as it was

    def __str__(self) -> str:
        if not self.compacted:
            return f"{self.path}: left as it is ({self.skipped})"
        return (f"{self.path}: {self.records:,} records, {self.blocks_before:,} blocks -> "
                f"{self.blocks_after:,}, {self.bytes_before:,} -> {self.bytes_after:,} bytes "
                f"({self.bytes_after / max(self.bytes_before, 1):.0%}) in {self.seconds:.1f} s")


class _Digest:
    """Streaming digests of every column of a run of blocks, in record order."""

    def __init__(self) -> None:
        self.parts = {name: xxhash.xxh3_128() for name in (*_COLUMNS, "payloads")}
        self.records = 0

    def add(self, cols: fmt.Columns) -> None:
        for name in _COLUMNS:
            self.parts[name].update(np.ascontiguousarray(getattr(cols, name),
                                                         dtype=_DTYPES[name]).tobytes())
        self.parts["payloads"].update(cols.payloads)
        self.records += len(cols.kind)

    def differs(self, other: "_Digest") -> list[str]:
        out = [name for name in self.parts
               if self.parts[name].digest() != other.parts[name].digest()]
        return out + (["records"] if self.records != other.records else [])


def compact_segment(path: Path | str, *, level: int | None = None,
                    block_bytes: int = COMPACT_BLOCK_BYTES,
                    progress: Callable[[int, int], None] | None = None) -> CompactReport:
    """Rewrite the closed segment at ``path`` with blocks of up to ``block_bytes`` payload
    bytes, compressed at zstd ``level`` (None: the level its writer was set to, as its
    footer says, else 1), the same records byte for byte: checked before the old file is
    replaced. ``progress(blocks_done, blocks)`` is called as old blocks are read. Raises
    WalIOError if the disk refuses, WalError if the rewrite does not read back equal (the
    old file is then untouched)."""
    path = Path(path)
    start = time.monotonic()
    if block_bytes < 1:
        raise ValueError("block_bytes must be positive")
    seg, fd = open_segment_held(path)
    try:
        why = _why_not(seg, block_bytes)
        report = CompactReport(path, False, why, records=seg.records,
                               blocks_before=len(seg.blocks), bytes_before=seg.size,
                               stored_before=seg.footer.stored_bytes if seg.footer else 0)
        if not why:
            why = _short_of_space(path, seg.size)
        if why:
            report.skipped = why
            return report
        tmp = path.with_name(f".{path.name}.compacting")
        try:
            out = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WalIOError(tmp, exc.strerror or str(exc)) from None
        try:
            why = _claim(out, tmp, fd, path)
            if why:
                report.skipped = why
                return report
            if level is None:
                level = seg.footer.level if seg.footer.level is not None else 1
            try:
                blocks, size, stored = _rewrite(fd, seg, out, level, block_bytes, progress)
                if size >= seg.size:
                    # Blocks that cannot merge (alternating codecs, or records with and
                    # without instrument keys) gain nothing: keep the segment as written.
                    os.unlink(tmp)
                    report.skipped = "its blocks cannot be merged into fewer, smaller ones"
                    return report
                os.fsync(out)
                # Still the file that was classified? Only a repair or another compaction
                # could have replaced it, and the lock rules out the second.
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    raise WalError(f"{path}: replaced while it was being compacted; left "
                                   "as it is")
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as exc:
            raise WalIOError(getattr(exc, "filename", None) or tmp,
                             exc.strerror or str(exc)) from None
        finally:
            os.close(out)
    finally:
        os.close(fd)
    try:
        fsync_dir(path.parent)
    except OSError as exc:      # the rename happened: either file is whole, the report true
        log.warning("%s compacted, but fsyncing its directory failed: %s", path, exc)
    report.compacted, report.blocks_after, report.bytes_after = True, blocks, size
    report.stored_after = stored
    report.seconds = time.monotonic() - start
    return report


def _claim(out: int, tmp: Path, fd: int, path: Path) -> str:
    """Lock the temporary file ``out`` for this compaction; "" if it is this compaction's to
    write, else why the segment is left to another one."""
    try:
        fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return "another compaction is writing it"
    try:
        here = os.stat(tmp).st_ino
    except FileNotFoundError:
        here = None
    if here != os.fstat(out).st_ino:
        # The file locked is one another compaction has unlinked (it failed, or put it in
        # place) after this one opened it: the name is someone else's now.
        return "another compaction is writing it"
    # The name is this compaction's from here on: whatever fails, the file goes with it.
    try:
        now = os.stat(path).st_ino
    except FileNotFoundError:
        now = None
    except BaseException:
        os.unlink(tmp)
        raise
    if now != os.fstat(fd).st_ino:
        # Another compaction put its copy in place after this one opened the old (or the
        # segment was removed): nothing to do, and the claimed name is this one's to remove.
        os.unlink(tmp)
        return ("compacted meanwhile by another compaction" if now is not None else
                "removed while being compacted")
    return ""


def _why_not(seg: Segment, block_bytes: int) -> str:
    if seg.header is None or seg.state != "closed" or seg.footer is None or seg.problems:
        return f"{seg.state} segment; only closed, undamaged segments are compacted"
    if seg.header.version < fmt.FORMAT_VERSION or seg.footer.format < fmt.FORMAT_VERSION:
        # Its blocks would be rewritten in this version's layout (keys as a dictionary),
        # which the builds that wrote it cannot read.
        return f"format version {seg.header.version} segment, kept readable by its builds"
    if seg.footer.compacted is not None:
        return "already compacted"
    if not seg.blocks:
        return "no blocks"
    if (len(seg.blocks) == 1
            or seg.footer.payload_bytes >= _WORTHWHILE * block_bytes * len(seg.blocks)):
        return "its blocks are large already"
    return ""


def _short_of_space(path: Path, size: int) -> str:
    try:
        st = os.statvfs(path.parent)
    except OSError as exc:
        raise WalIOError(path.parent, exc.strerror or str(exc)) from None
    free = st.f_bavail * st.f_frsize
    if free < size + FREE_RESERVE_BYTES:
        return (f"not enough free disk: {free:,} bytes free, the copy needs up to {size:,} and "
                f"{FREE_RESERVE_BYTES:,} are kept for the live writer")
    return ""


def _rewrite(fd: int, seg: Segment, out: int, level: int, block_bytes: int,
             progress) -> tuple[int, int, int]:
    """Write the compacted segment to ``out`` and check it reads back as ``seg`` did.
    Returns (blocks, file size, block frame bytes)."""
    os.ftruncate(out, 0)
    dctx = zstandard.ZstdDecompressor()
    cctx = zstandard.ZstdCompressor(level=level)
    header = os.pread(fd, fmt.HEADER_SIZE, 0)      # as it was, byte for byte
    _write_all(out, header, 0)
    end = len(header)
    acc = FooterAccumulator()
    before = _Digest()
    parts: list[fmt.Columns] = []
    pending = 0
    codec = None

    def flush() -> None:
        nonlocal end, parts, pending
        if not parts:
            return
        cols = fmt.concat_columns(parts)
        body, raw_len = fmt.compress_block(cols, codec, cctx)
        frame = fmt.block_frame(cols, codec, len(acc.rows), acc.records, body, raw_len) + body
        _write_all(out, frame, end)
        acc.add(end, len(frame), cols)
        end += len(frame)
        parts, pending = [], 0

    for i, ref in enumerate(seg.blocks):
        cols = read_block(fd, ref, dctx)
        before.add(cols)
        # A footer's index does not hold the codec: read_block checked this frame header.
        frame = fmt.unpack_frame(os.pread(fd, fmt.FRAME_SIZE, ref.offset))
        if parts and (frame.codec != codec
                      or cols.has_instruments != parts[0].has_instruments):
            flush()     # a block holds one codec, and keys for all its records or none
        codec = frame.codec
        parts.append(cols)
        pending += len(cols.payloads)
        if pending >= block_bytes:
            flush()
        if progress is not None:
            progress(i + 1, len(seg.blocks))
    flush()
    old = seg.footer
    footer = acc.footer(old.recovered)
    footer.closed_ns, footer.format, footer.level = old.closed_ns, old.format, old.level
    footer.extra = old.extra        # keys a later build wrote, kept for it
    footer.compacted = {"blocks": len(seg.blocks), "stored_bytes": old.stored_bytes,
                        "level": level, "compacted_ns": time.time_ns()}
    tail = footer_bytes(footer, end, len(acc.rows))
    _write_all(out, tail, end)
    size = end + len(tail)
    # Read the new file back through the reader's own classification and decoding.
    new = classify(out, seg.path)
    if new.state != "closed" or new.problems or len(new.blocks) != len(acc.rows):
        raise WalError(f"{seg.path}: the compacted copy does not read back as a closed "
                       f"segment ({new.state}); the segment is left as it is")
    after = _Digest()
    for ref in new.blocks:
        after.add(read_block(out, ref, dctx))
    differs = before.differs(after)
    if differs:
        raise WalError(f"{seg.path}: the compacted copy differs in {', '.join(differs)}; "
                       "the segment is left as it is")
    return len(acc.rows), size, acc.stored_bytes


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def compact(path: Path | str, *, level: int | None = None,
            block_bytes: int = COMPACT_BLOCK_BYTES,
            progress: Callable[[int, int, int, int], None] | None = None
            ) -> list[CompactReport]:
    """Compact every closed segment under ``path`` (a data root, venue, day or stream
    directory, or one segment file); a report per segment, in order. A live writer does not
    stop it: the segment a writer appends to has no footer yet and is left alone, and a
    writer never appends to a closed segment. A segment that fails (the disk, a copy that
    does not read back equal) is reported as ``failed`` and left as it was; the others go
    on. ``progress(segment, segments, block, blocks)`` as blocks are read. Raises WalIOError
    if ``path`` does not exist."""
    paths = layout.find_segments(path)
    reports = []
    for i, p in enumerate(paths):
        cb = None if progress is None else (
            lambda done, total, i=i: progress(i, len(paths), done, total))
        try:
            reports.append(compact_segment(p, level=level, block_bytes=block_bytes,
                                           progress=cb))
        except WalError as err:
            reports.append(CompactReport(p, False, f"failed: {err}", failed=True))
    return reports


class Compactor:
    """A thread that compacts the segments handed to it (``submit``), one at a time: how a
    writer compacts each segment it closes without holding up appends. A failure is logged
    and kept in ``errors``; the segment then stays as it was, whole."""

    def __init__(self, level: int | None = None, block_bytes: int = COMPACT_BLOCK_BYTES,
                 name: str = "wal-compact",
                 on_done: Callable[[CompactReport], None] | None = None):
        self.level, self.block_bytes, self.on_done = level, block_bytes, on_done
        self.reports: list[CompactReport] = []
        self.errors: list[str] = []
        self._pending = 0           # submitted and not finished
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, path: Path | str) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(Path(path))

    def close(self) -> None:
        """Compact what was submitted, then stop. Safe to call twice."""
        if self._thread.is_alive():
            if self._pending:
                log.info("compacting %d WAL segment(s) before stopping; interrupting leaves "
                         "them as written, whole", self._pending)
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (path := self._queue.get()) is not None:
            try:
                report = compact_segment(path, level=self.level, block_bytes=self.block_bytes)
            except Exception as exc:     # the segment is intact: a failure costs only space
                self.errors.append(f"{path}: {exc}")
                log.warning("compacting %s failed; it stays as written: %s", path, exc)
                continue
            finally:
                with self._lock:
                    self._pending -= 1
            self.reports.append(report)
            if report.compacted:
                log.info("compacted %s", report)
                if self.on_done is not None:
                    self.on_done(report)
