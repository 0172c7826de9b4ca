"""``wal inspect`` and ``wal verify``: what is in a log, and whether every byte checks out."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from shrivenq.errors import WalCorruptError, WalError, WalFormatError
from shrivenq.wal import layout
from shrivenq.wal.segment import (
    FooterAccumulator, RepairReport, Segment, open_segment, open_segment_held, read_block,
    repair_segment)


@dataclass
class SegmentSummary:
    path: Path
    venue: str
    stream: str
    state: str                  # closed | open | torn | corrupt | unreadable
    size: int = 0
    blocks: int = 0
    records: int = 0
    first_wall_ns: int | None = None
    last_wall_ns: int | None = None
    payload_bytes: int = 0      # the records' payloads as received
    stored_bytes: int = 0       # block frames on disk
    kinds: dict[int, int] = field(default_factory=dict)
    instruments: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    live: bool = False          # a writer holds the stream right now
    later: bool = False         # later segments exist in its directory
    compacted: bool = False     # rewritten into large blocks (wal.compact)

    @property
    def ratio(self) -> float:
        return self.payload_bytes / self.stored_bytes if self.stored_bytes else 0.0


def _live(seg_path: Path) -> bool:
    """Does a writer hold this segment's venue/stream lock right now?"""
    venue_dir = seg_path.parent.parent.parent
    lock = venue_dir / f".{seg_path.parent.name}.lock"
    if not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _newest(paths: list[Path]) -> set[Path]:
    """The newest segment of each venue/stream: the only one a live writer can be writing."""
    last: dict[tuple[str, str], Path] = {}
    for p in paths:                  # find_segments orders by venue, stream, day, number
        last[layout.stream_key(p)] = p
    return set(last.values())


def _summarise(seg: Segment, fd: int, decode: bool, newest: set[Path] | None = None,
               later: bool = False) -> SegmentSummary:
    """``seg`` summarised; with ``decode``, every block read (from ``fd``, the file it was
    classified from) and checked against the footer."""
    venue, stream = layout.stream_key(seg.path)
    s = SegmentSummary(seg.path, venue, stream, seg.state, seg.size, len(seg.blocks),
                       seg.records, problems=[str(p) for p in seg.problems], later=later)
    # A live writer's segment is open, or torn while a block is half-written: both normal.
    s.live = (seg.state in ("open", "torn") and (newest is None or seg.path in newest)
              and _live(seg.path))
    if later and seg.unclosed:
        s.problems.append(f"{seg.path}: {seg.lost_end()}; repair leaves it as is")
    elif seg.state == "torn" and not s.live:
        if seg.header is None:
            s.problems.append(f"{seg.path}: only {seg.size} bytes of a segment header, no "
                              "blocks (a crash while the segment was created; `wal verify "
                              "--repair` removes it)")
        else:
            s.problems.append(f"{seg.path}: torn tail of {seg.size - seg.good_end} bytes "
                              f"after byte {seg.good_end}")
    f = seg.footer
    s.compacted = f is not None and f.compacted is not None
    if f is not None and not decode:
        s.first_wall_ns, s.last_wall_ns = f.first_wall_ns, f.last_wall_ns
        s.payload_bytes, s.stored_bytes = f.payload_bytes, f.stored_bytes
        s.kinds, s.instruments = f.kinds, f.instruments
        return s
    acc = FooterAccumulator()
    dctx = zstandard.ZstdDecompressor()
    for ref in seg.blocks:
        try:
            cols = read_block(fd, ref, dctx)
        except WalCorruptError as err:
            s.problems.append(str(err))
            continue
        except WalFormatError as err:
            s.problems.append(f"{seg.path}: block {ref.block}: {err}")
            continue
        acc.add(ref.offset, ref.frame.size, cols)
    s.first_wall_ns, s.last_wall_ns = acc.first_wall, acc.last_wall
    s.payload_bytes, s.stored_bytes = acc.payload_bytes, acc.stored_bytes
    s.kinds, s.instruments = acc.kinds, acc.instruments
    if f is not None:
        # The footer must say exactly what the blocks hold.
        for name, mine, theirs in (("records", acc.records, f.records),
                                   ("payload bytes", acc.payload_bytes, f.payload_bytes),
                                   ("kinds", acc.kinds, f.kinds),
                                   ("instrument counts", acc.instruments, f.instruments),
                                   ("first time", acc.first_wall, f.first_wall_ns),
                                   ("last time", acc.last_wall, f.last_wall_ns)):
            if mine != theirs and not any("block" in p for p in s.problems):
                s.problems.append(f"{seg.path}: footer {name} disagree with the blocks")
    return s


def inspect(path) -> list[SegmentSummary]:
    """A summary per segment under ``path``: from the footer when there is one, otherwise by
    decoding the blocks. Raises WalIOError if ``path`` does not exist."""
    return _summaries(path, decode=False)


def _summaries(path, decode: bool, progress=None) -> list[SegmentSummary]:
    """_summarise of every segment under ``path``; one that cannot be opened is listed as
    unreadable, with why. ``progress(segments done, segments, records so far)`` after
    each."""
    out = []
    records = 0
    paths = layout.find_segments(path)
    newest = _newest(paths)
    holes = {} if Path(path).is_file() else layout.numbering_holes(paths)
    last_in_dir = layout.newest_in_dirs(paths)
    for p in paths:
        try:
            # The blocks are read from the file classified, even if compaction replaces it.
            seg, fd = open_segment_held(p)
        except WalError as err:
            venue, stream = layout.stream_key(p)
            out.append(SegmentSummary(p, venue, stream, "unreadable", problems=[str(err)]))
        else:
            try:
                out.append(_summarise(seg, fd, decode=decode, newest=newest,
                                      later=p not in last_in_dir))
            finally:
                os.close(fd)
        if p in holes:
            # Listed first: the loss comes before this segment's own records.
            out[-1].problems.insert(0, f"{p.parent}: {layout.describe_hole(p, *holes[p])}"
                                       " (deleted or lost: the records they held are gone)")
        if progress is not None:
            records += out[-1].records
            progress(len(out), len(paths), records)
    return out


@dataclass
class VerifyReport:
    segments: list[SegmentSummary]
    repairs: list[RepairReport] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Every segment closed (or open under a live writer) and without problems."""
        return all(not s.problems and (s.state == "closed" or s.live)
                   for s in self.segments)

    @property
    def problems(self) -> list[str]:
        out = []
        for s in self.segments:
            out.extend(s.problems)
            if s.state == "open" and not s.live and not s.later:
                out.append(f"{s.path}: no footer (a writer crashed); run verify --repair")
        return out


def verify(path, repair: bool = False, progress=None) -> VerifyReport:
    """Check every header, frame, checksum and footer under ``path`` and decode every record.
    ``repair``: first do what a writer's recovery does after a crash, to segments no live
    writer holds: cut the torn tail and rebuild the footer of each directory's newest
    segment, and cut bytes appended after a closed segment's trailer. A segment damaged in
    any other way (an older one that lost its end included) is never modified.
    ``progress(segments done, segments, records so far)`` is called after each segment."""
    repairs = []
    if repair:
        paths = layout.find_segments(path)
        newest = _newest(paths)
        crash_leftovers = layout.newest_in_dirs(paths)
        for p in paths:
            try:
                seg = open_segment(p)
                state, appended = seg.state, seg.footer is not None and seg.state == "torn"
            except WalFormatError:
                state, appended = "unreadable", False
            if not (p in crash_leftovers or appended):
                continue
            if state in ("open", "torn", "unreadable") and not (p in newest and _live(p)):
                try:
                    r = repair_segment(p)
                except WalFormatError:
                    continue
                if r is not None:
                    repairs.append(r)
    return VerifyReport(_summaries(path, decode=True, progress=progress), repairs)
