"""Kite replay: the books rebuilt from the ticks stream, deterministically, bit for bit.

Replay walks the ticks stream in WAL order, block by block. A block is cut at its control
records; each run of binary frames between them is parsed with one call and applied to the
books with one call, so no Python object is made per tick. The books follow what the live
capture did: they start empty at every SESSION_START, and at every SNAPSHOT_MARK they must
hash to what the snapshot stored (``verify=True`` checks it).

Seeking: with a start time, replay loads the latest snapshot taken at or before it, reads the
ticks stream from that snapshot's time (the WAL's block index skips what lies before) and
applies the records after its mark. Replaying the last minute of a day costs about what the
first minute costs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import msgpack
import numpy as np

from shrivenq._ext.kite_frame import parse_many
from shrivenq._ext.tick_delta import unpack_ticks
from shrivenq.wal.format import PackedPayloads, tick_delta_available
from shrivenq.books import KiteBooks, state_hash
from shrivenq.books.snapshot import (
    KiteSnapshot, SnapshotInfo, decode_kite_snapshot, peek_kite_snapshot,
)
from shrivenq.errors import ReplayError, ShrivenqError, WalError, WalFormatError
from shrivenq.kite import TICK_DTYPE
from shrivenq.wal import Kind, WalReader
from shrivenq.wal.records import MESSAGE_KINDS, session_names
from shrivenq.wal.segment import open_segment

log = logging.getLogger("shrivenq.replay.kite")

VENUE = "kite"
# Per record kind (u8): is it a control record replay acts on / a message. A table lookup
# per block is some twenty times cheaper than np.isin on a block's thousand records.
_IS_CONTROL = np.zeros(256, dtype=bool)
_IS_CONTROL[[Kind.SESSION_START, Kind.SESSION_STOP, Kind.SNAPSHOT_MARK, Kind.GAP,
             Kind.DISCONNECT]] = True
_IS_MESSAGE = np.zeros(256, dtype=bool)
_IS_MESSAGE[sorted(MESSAGE_KINDS)] = True


def _gap_entry(doc: dict, session: str | None) -> dict:
    """A GAP record as replay reports it."""
    return {"conn": doc.get("conn"), "from_ns": doc.get("from_ns"), "to_ns": doc.get("to_ns"),
            "reason": doc.get("reason"), "session": session}


def gap_overlaps(gap: dict, start_ns: int | None, end_ns: int | None) -> bool:
    """Whether a reported gap could have held ticks in [start_ns, end_ns)."""
    lo, hi = gap.get("from_ns"), gap.get("to_ns")
    if start_ns is not None and isinstance(hi, int) and hi < start_ns:
        return False
    return not (end_ns is not None and isinstance(lo, int) and lo >= end_ns)


@dataclass
class TickBatch:
    """Ticks in WAL order: ``rows`` (TICK_DTYPE), their receive times and connections, and,
    when asked for, ``books``: each tick's instrument book right after that tick."""

    rows: np.ndarray
    wall_ns: np.ndarray
    conn: np.ndarray
    books: np.ndarray | None = None
    session: str | None = None       # the capture session the ticks belong to


@dataclass
class Mismatch:
    session: str
    snapshot: int
    wall_ns: int
    details: list[str]


#: How much of a stream's tail a crash can lose: capture seals a block every second and the
#: writer thread writes it within about another, so a record more than this older than the
#: end of its stream was on disk (a mark without its snapshot, or a snapshot without its
#: mark, further from the end than this was lost, not left unwritten).
CRASH_WINDOW_NS = 5 * 10**9

#: A seed's mark is written at the snapshot's own time, so a pass that has read this far
#: past it without the mark gives up on it (a margin for the wall clock stepping back).
SEED_MARK_WAIT_NS = 60 * 10**9

#: Seeds tried, each earlier than the last, when a seed snapshot's mark is not found, before
#: reading from the start of the log.
SEED_TRIES = 8

_STREAM_OF_SEGMENT = re.compile(r"/\d{4}-\d{2}-\d{2}/(ticks|snapshots)/[^/]*\.wal")


def stream_of(problem: str) -> str | None:
    """The stream ("ticks" or "snapshots") of the segment a skipped-part message names,
    from the WAL's layout (VENUE/DAY/STREAM/NNNNNN.wal), not from any directory name."""
    found = _STREAM_OF_SEGMENT.findall(problem)
    return found[-1] if found else None


def _merged(first: list[str], more) -> list[str]:
    """``first`` then what of ``more`` it lacks, in order: a part is listed once."""
    out = list(first)
    out += [m for m in map(str, more) if m not in out]
    return out


def _ends_in_a_crash(segment: Path | None) -> bool:
    """Whether the segment holding a session's last record shows a crash: left open (no
    footer), or closed by a later writer's recovery. A segment closed cleanly does not: if
    its session's end is missing, later segments were lost."""
    if segment is None:
        return False
    try:
        footer = open_segment(segment).footer
    except ShrivenqError:
        return False
    return footer is None or bool(footer.recovered)


class _SeedMarkLost(Exception):
    """A pass seeded from a snapshot found the end of the snapshot's session (or of the
    log) without its mark: capture died before the mark's block reached disk, or the part
    of the ticks stream holding it was skipped as damaged or missing."""

    def __init__(self, seed: KiteSnapshot, skipped: list[str]):
        super().__init__(seed.session, seed.snapshot)
        self.session, self.snapshot, self.wall_ns = seed.session, seed.snapshot, seed.wall_ns
        self.skipped = skipped


@dataclass
class InstrumentSummary:
    token: int
    ticks: int = 0
    first_wall_ns: int = 0
    last_wall_ns: int = 0
    book: np.ndarray | None = None   # the last book state (one TICK_DTYPE row)


@dataclass
class ReplayResult:
    instruments: dict[int, InstrumentSummary] = field(default_factory=dict)
    gaps: list[dict] = field(default_factory=list)
    snapshots_checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    #: verify=True: whether the pass was asked to verify, and the snapshot marks read whose
    #: snapshot record is not in the snapshots stream, as (session, snapshot, wall_ns):
    #: ``snapshots_lost`` where the stream holds a later snapshot of the session or the
    #: session stopped cleanly (a hole: data lost), ``snapshots_unwritten`` at the end of a
    #: session that never stopped (a crash between the mark and its snapshot).
    verify: bool = False
    snapshots_lost: list[tuple[str, int, int]] = field(default_factory=list)
    snapshots_unwritten: list[tuple[str, int, int]] = field(default_factory=list)
    #: verify=True: snapshots in range whose mark is not in the ticks stream, likewise:
    #: ``marks_lost`` where the ticks stream went on past them (ticks were lost, or
    #: the session stopped cleanly), ``marks_unwritten`` within CRASH_WINDOW_NS after the
    #: last record of a session that never stopped (a crash before the mark reached disk).
    marks_lost: list[tuple[str, int, int]] = field(default_factory=list)
    marks_unwritten: list[tuple[str, int, int]] = field(default_factory=list)
    #: What the pass did differently from what was asked, and why (one line each).
    notes: list[str] = field(default_factory=list)
    #: As the pass goes: connections lost and not yet back (conn -> (since, reason)), for a
    #: sampler to tell a stale book; once an outage's GAP record is read it is in ``gaps``.
    conn_down: dict[int, tuple[int, str]] = field(default_factory=dict)
    ticks: int = 0
    seeded_from: SnapshotInfo | None = None
    bad_frames: int = 0
    #: What the read skipped (on_corrupt="skip": damaged blocks, missing or unreadable
    #: segments) and the torn tails it stopped at (what a crash leaves), as messages.
    skipped: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    #: The books as they stood at the start time (TICK_DTYPE rows, of the instruments asked
    #: for): what a sampler reports for an instrument that has not ticked since.
    start_books: np.ndarray | None = None
    start_session: str | None = None   # the session start_books belong to
    #: Wall time of each session's stop record read (a session without one crashed or runs).
    stops: dict[str, int] = field(default_factory=dict)


def _rows_of_block(cols):
    """A tick_delta block's binary frames decoded straight to rows, without making their
    bytes: ``(rows, rec, wall, conn)`` as ``tick_delta.unpack_ticks`` gives them, rec
    ascending. None when the block is not tick_delta or holds a frame that is not
    well-formed (it is then unpacked and parsed, and the frame's faults counted)."""
    payloads = cols.payloads
    if not isinstance(payloads, PackedPayloads):
        return None
    out = unpack_ticks(payloads.packed, payloads.lengths,
                       (cols.kind == Kind.BINARY).view(np.uint8), cols.wall_ns, cols.conn)
    if out is not None:
        payloads.checked = True
    return out


def venue_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir)
    if (path / VENUE).is_dir():
        return path / VENUE
    if path.name == VENUE and path.is_dir():
        return path
    raise ReplayError(f"no Kite data under {path} (expected {path / VENUE})")


def _has_stream(vdir: Path, stream: str) -> bool:
    return any(vdir.glob(f"*/{stream}/*.wal"))


def _snapshot_batches(vdir: Path, start_ns: int | None = None, end_ns: int | None = None,
                      on_corrupt: str = "raise", skipped: list[str] | None = None):
    """Snapshot records with start_ns <= time <= end_ns; the WAL's index skips the rest.
    ``on_corrupt="skip"``: damaged parts of the snapshots stream are left out and named in
    ``skipped``."""
    if not _has_stream(vdir, "snapshots"):
        return
    reader = WalReader(vdir, "snapshots", start_ns=start_ns,
                       end_ns=None if end_ns is None else end_ns + 1,
                       kinds=[Kind.BOOK_SNAPSHOT], on_corrupt=on_corrupt)
    try:
        yield from reader
    finally:
        if skipped is not None:
            skipped[:] = _merged(skipped, reader.skipped)


def snapshot_index(vdir: Path, start_ns: int | None = None, end_ns: int | None = None,
                   on_corrupt: str = "raise", skipped: list[str] | None = None
                   ) -> dict[tuple[str, int], SnapshotInfo]:
    """Session, number, time and hash of every snapshot taken in [start_ns, end_ns]."""
    out: dict[tuple[str, int], SnapshotInfo] = {}
    for batch in _snapshot_batches(vdir, start_ns, end_ns, on_corrupt, skipped):
        for i in range(len(batch)):
            info = _peek(batch, i)
            out[(info.session, info.snapshot)] = info
    return out


def _peek(batch, i: int) -> SnapshotInfo:
    try:
        return peek_kite_snapshot(batch.payload(i))
    except WalFormatError as exc:
        raise ReplayError(f"{batch.segment}: snapshot record {batch.first_record + i}: {exc}") \
            from None


def _decode_snapshot(batch, i: int) -> KiteSnapshot:
    try:
        return decode_kite_snapshot(batch.payload(i))
    except WalFormatError as exc:
        raise ReplayError(f"{batch.segment}: snapshot record {batch.first_record + i}: {exc}") \
            from None


def latest_snapshot(vdir: Path, at_ns: int, on_corrupt: str = "raise",
                    skipped: list[str] | None = None) -> KiteSnapshot | None:
    """The latest snapshot taken at or before ``at_ns`` (with ``on_corrupt="skip"``, the
    latest one undamaged). Looks back in widening windows, so finding one near the end of a
    long day reads only the last few snapshots."""
    span = 5 * 60 * 10**9
    while True:
        best = None
        for batch in _snapshot_batches(vdir, at_ns - span, at_ns, on_corrupt, skipped):
            for i in range(len(batch)):
                if int(batch.wall_ns[i]) <= at_ns and (best is None or
                                                       batch.wall_ns[i] >= best[0].wall_ns[best[1]]):
                    best = (batch, i)
        if best is not None:
            return _decode_snapshot(*best)
        if span > 400 * 24 * 3600 * 10**9:  # more than a year back: there is none
            return None
        span *= 8


def load_snapshot(vdir: Path, info: SnapshotInfo, on_corrupt: str = "raise") -> KiteSnapshot:
    for batch in _snapshot_batches(vdir, info.wall_ns, info.wall_ns, on_corrupt):
        for i in range(len(batch)):
            snap = _decode_snapshot(batch, i)
            if snap.session == info.session and snap.snapshot == info.snapshot:
                return snap
    raise ReplayError(f"snapshot {info.snapshot} of session {info.session} is not in {vdir}")


def _diff(replayed: np.ndarray, stored: np.ndarray, names: dict[int, str] | None = None
          ) -> list[str]:
    """Which instruments (by name where ``names`` has it, and token) and fields differ
    between two book states."""
    out = []
    a = {int(r["token"]): r for r in replayed}
    b = {int(r["token"]): r for r in stored}
    names = names or {}
    for token in sorted(set(a) | set(b)):
        label = f"{names[token]} (token {token})" if names.get(token) else f"token {token}"
        if token not in a or token not in b:
            out.append(f"{label}: only in the {'snapshot' if token in b else 'replay'}")
            continue
        fields = [name for name in TICK_DTYPE.names
                  if not np.array_equal(a[token][name], b[token][name])]
        if fields:
            out.append(f"{label}: " + ", ".join(
                f"{f} replayed {a[token][f].tolist()} stored {b[token][f].tolist()}"
                for f in fields[:4]))
    return out


class KiteReplay:
    """Replays one data directory's Kite ticks. Each ``ticks()`` call is an independent pass."""

    def __init__(self, data_dir: str | Path, on_corrupt: str = "raise",
                 workers: int | None = None, names: dict[int, str] | None = None):
        """``workers``: threads decoding the WAL's blocks ahead of the books (see
        ``WalReader``; None lets the reader choose by the cores available). ``names``: a
        dict each pass adds the instrument names recorded by the session starts it reads to
        (token -> tradingsymbol on the recording day)."""
        self.names = names if names is not None else {}
        self.vdir = venue_dir(data_dir)
        if not _has_stream(self.vdir, "ticks"):
            raise ReplayError(f"no ticks stream under {self.vdir}")
        self.on_corrupt = on_corrupt
        self.workers = workers
        self.result = ReplayResult()

    def _seed(self, start_ns: int | None, skipped: list[str]
              ) -> tuple[KiteSnapshot | None, int | None]:
        """The latest snapshot at or before ``start_ns``, and where to start reading."""
        if start_ns is None:
            return None, None
        seed = latest_snapshot(self.vdir, start_ns, self.on_corrupt, skipped)
        return (seed, seed.wall_ns) if seed is not None else (None, None)

    def ticks(self, start_ns: int | None = None, end_ns: int | None = None,
              tokens=None, verify: bool = False, books: bool = False) -> Iterator[TickBatch]:
        """Ticks with start_ns <= receive time < end_ns (of ``tokens`` if given), in order,
        batch by batch. ``books=True`` adds each tick's book right after it. Summary,
        gaps and verification land in ``self.result`` as the pass goes."""
        # A seed whose mark is never found (see _SeedMarkLost) is replaced by the snapshot
        # before it. Nothing was yielded by then: a pass waits for its seed's mark first.
        carried: list[str] = []
        notes: list[str] = []
        before = None
        for _ in range(SEED_TRIES):
            try:
                yield from self._pass(start_ns, end_ns, tokens, verify, books, True, before,
                                      carried, notes)
                return
            except _SeedMarkLost as lost:
                carried, before = lost.skipped, lost.wall_ns
                where = ("is in a part of the ticks stream that was left out" if lost.skipped
                         else "is not in the ticks stream (capture died before it reached "
                              "the disk, or ticks were lost)")
                notes.append(f"the mark of snapshot {lost.snapshot} of session "
                             f"{lost.session[:8]}, the one to start from, {where}: started "
                             "from an earlier snapshot")
        notes[-1] = notes[-1].replace("an earlier snapshot", "the start of the log")
        yield from self._pass(start_ns, end_ns, tokens, verify, books, False, None, carried,
                              notes)

    def _pass(self, start_ns: int | None, end_ns: int | None, tokens, verify: bool,
              books: bool, seeded: bool, before: int | None, carried: list[str],
              notes: list[str]) -> Iterator[TickBatch]:
        res = self.result = ReplayResult(verify=verify)
        snap_skipped: list[str] = list(carried)
        res.notes.extend(notes)
        token_filter = None if tokens is None else np.unique(np.asarray(tokens, dtype=np.uint32))
        seed_at = start_ns if before is None or start_ns is None else min(start_ns, before - 1)
        seed, read_from = self._seed(seed_at, snap_skipped) if seeded else (None, None)
        book_state = KiteBooks()
        expect: dict[tuple[str, int], SnapshotInfo] = {}
        if verify:
            expect = snapshot_index(self.vdir, read_from, end_ns, self.on_corrupt, snap_skipped)
        missing: list[tuple[str, int, int]] = []   # marks read without their snapshot
        marks_seen: set[tuple[str, int]] = set()
        last_of: dict[str, int] = {}      # per session: the time of its last record read
        last_seg: dict[str, Path] = {}    # per session: the segment of that record
        skips_seen = 0      # after a part left out, whose records follow is not known
        owner_known = True  # until the next session start (its own start may be lost)
        waiting_for_mark = None
        if seed is not None:
            book_state.load(seed.rows)
            waiting_for_mark = (seed.session, seed.snapshot)
            res.seeded_from = SnapshotInfo(seed.session, seed.snapshot, seed.wall_ns, seed.hash)
        session = seed.session if seed is not None else None
        stopped_at = None     # wall time of the current session's stop record, once read
        down = res.conn_down                    # conn -> (disconnect time, reason), no GAP yet
        got_messages = False                    # any message received in the range
        # Rows are filtered by instrument after decoding: the reader's instrument filter
        # would cut the batches down and leave the blocks to the slower unpack-and-parse
        # path, and verification needs every instrument's book anyway.
        reader = WalReader(self.vdir, "ticks", start_ns=read_from, end_ns=end_ns,
                           on_corrupt=self.on_corrupt, workers=self.workers,
                           prepare=_rows_of_block if tick_delta_available() else None)
        try:
            for batch in reader:
                kind = batch.kind
                if len(reader.skipped) != skips_seen:
                    skips_seen, owner_known = len(reader.skipped), False
                if (waiting_for_mark is not None and len(batch)
                        and int(batch.wall_ns[0]) > seed.wall_ns + SEED_MARK_WAIT_NS):
                    # long past the seed's time: its mark is not coming (a lost segment in
                    # the middle of a session that goes on for hours)
                    raise _SeedMarkLost(seed, _merged(snap_skipped, reader.skipped))
                if not got_messages:
                    got = _IS_MESSAGE[kind]
                    if start_ns is not None:
                        got &= batch.wall_ns >= start_ns
                    got_messages = bool(got.any())
                cuts = np.flatnonzero(_IS_CONTROL[kind])
                start = 0
                for cut in [*cuts.tolist(), len(batch)]:
                    if cut > start and session is not None and owner_known:
                        last_of[session] = int(batch.wall_ns[cut - 1])
                        last_seg[session] = batch.segment
                    if waiting_for_mark is None and cut > start:
                        out = self._run(batch, start, cut, book_state, start_ns, token_filter,
                                        books, session)
                        if out is not None:
                            yield out
                    if cut == len(batch):
                        break
                    k = int(kind[cut])
                    wall = int(batch.wall_ns[cut])
                    doc = self._control(batch, cut)
                    own = doc.get("session")
                    own = str(own) if isinstance(own, (str, int)) else session
                    if own is not None:
                        last_of[own] = wall
                        last_seg[own] = batch.segment
                    if waiting_for_mark is not None and (
                            (k == Kind.SESSION_START and own != waiting_for_mark[0])
                            or (k == Kind.SESSION_STOP and own == waiting_for_mark[0])):
                        # the seed's session is over and its mark never came
                        raise _SeedMarkLost(seed, _merged(snap_skipped, reader.skipped))
                    if (waiting_for_mark is None and start_ns is not None
                            and res.start_books is None and wall >= start_ns):
                        # the start falls before this record (a stop, the next session's
                        # start) and after the last tick: the books as they stood then
                        self._note_start(book_state, token_filter, session, stopped_at,
                                         start_ns)
                    if k == Kind.SNAPSHOT_MARK:
                        mark = (str(doc["session"]), int(doc["snapshot"]))
                        marks_seen.add(mark)
                        if waiting_for_mark is not None:
                            if mark == waiting_for_mark:
                                waiting_for_mark = None
                        elif verify and (start_ns is None or wall >= start_ns):
                            self._check(book_state, mark, wall, expect, missing)
                    elif waiting_for_mark is None:
                        if k == Kind.SESSION_START:
                            self._harvest(book_state, token_filter)
                            book_state.clear()
                            session = str(doc["session"])
                            owner_known = True
                            stopped_at = None
                            down.clear()
                            self.names.update(session_names(doc))
                        elif k == Kind.SESSION_STOP:
                            stopped_at = wall
                            down.clear()
                            if own is not None:     # the record's own session
                                res.stops[own] = wall
                        elif k == Kind.GAP:
                            res.gaps.append(_gap_entry(doc, session))
                            down.pop(doc.get("conn"), None)
                        elif k == Kind.DISCONNECT and isinstance(doc.get("conn"), int):
                            # its GAP comes at reconnect, maybe past the range read
                            down[doc["conn"]] = (wall, str(doc.get("reason") or ""))
                    start = cut + 1
        except ShrivenqError:
            raise
        finally:
            res.skipped = _merged(snap_skipped, reader.skipped)
            res.torn = [str(t) for t in reader.torn]
        if end_ns is not None and (down or not got_messages):
            # an outage the range ends in (a DISCONNECT without its GAP) or lies wholly in
            # (nothing received): its GAP record comes after the end
            self._gaps_past_end(res, down, start_ns, end_ns, session)
        for conn, (since, reason) in sorted(down.items()):
            # lost and not back (no GAP record yet) by the end of the range: a gap still open
            res.gaps.append({"conn": conn, "from_ns": since, "to_ns": None,
                             "reason": f"not reconnected by the end of the range read ({reason})",
                             "session": session})
        if start_ns is not None and res.start_books is None:
            self._note_start(book_state, token_filter, session, stopped_at, start_ns)
        if waiting_for_mark is not None:
            raise _SeedMarkLost(seed, res.skipped)
        self._harvest(book_state, token_filter)
        if verify:
            judged: dict[str, bool] = {}

            def crashed(session: str) -> bool:     # asked only of a candidate: opens a file
                if session not in judged:
                    judged[session] = _ends_in_a_crash(last_seg.get(session))
                return judged[session]

            self._sort_missing(missing, expect, end_ns, last_of, crashed)
            self._sort_unmarked(expect, marks_seen, start_ns, end_ns, last_of, crashed)

    def _sort_missing(self, missing: list[tuple[str, int, int]],
                      expect: dict[tuple[str, int], SnapshotInfo], end_ns: int | None,
                      last_of: dict[str, int], crashed) -> None:
        """Marks read whose snapshot is not in the snapshots stream. Left unwritten only by a
        crash right after the mark: the session never stopped (a clean stop writes a last
        snapshot), has no later snapshot, ends in a crashed segment less than
        CRASH_WINDOW_NS after the mark, and no damage to the snapshots stream was skipped.
        Else lost."""
        res = self.result
        if not missing:
            return
        damaged = any(stream_of(p) == "snapshots" for p in res.skipped)
        later: dict[str, int] = {}            # per session: its highest snapshot number known
        for session, number in expect:
            later[session] = max(later.get(session, -1), number)
        undecided = {m for m in missing if m[0] not in res.stops and later.get(m[0], -1) < m[1]}
        if undecided and end_ns is not None and not damaged:
            self._look_past_end(undecided, later)
        for session, number, wall in missing:
            ends = last_of.get(session)
            unwritten = (not damaged and session not in res.stops
                         and later.get(session, -1) < number
                         and ends is not None and ends - wall <= CRASH_WINDOW_NS
                         and crashed(session))
            (res.snapshots_unwritten if unwritten else res.snapshots_lost).append(
                (session, number, wall))

    def _look_past_end(self, undecided: set[tuple[str, int, int]],
                       later: dict[str, int]) -> None:
        """Snapshots after the range read, for marks whose fate they decide: read until
        each undecided session has a later snapshot, or a snapshot of a session that started
        after its marks shows it is over (a venue's sessions follow each other), never to
        the end of the log."""
        need = {}                  # session -> (its highest missing number, its last mark)
        for session, number, wall in undecided:
            n, w = need.get(session, (-1, 0))
            need[session] = (max(n, number), max(w, wall))
        # past the range: damage there is not this read's (skipped, never reported)
        for batch in _snapshot_batches(self.vdir, min(m[2] for m in undecided), None,
                                       "skip", []):
            for i in range(len(batch)):
                info = _peek(batch, i)
                if info.session in need:
                    later[info.session] = max(later.get(info.session, -1), info.snapshot)
                    if info.snapshot > need[info.session][0]:
                        del need[info.session]
                else:
                    for session in [s for s, (_, w) in need.items() if w < info.wall_ns]:
                        del need[session]       # over: a later session is snapshotting
                if not need:
                    return

    def _sort_unmarked(self, expect: dict[tuple[str, int], SnapshotInfo],
                       marks_seen: set[tuple[str, int]], start_ns: int | None,
                       end_ns: int | None, last_of: dict[str, int],
                       crashed) -> None:
        """Snapshots in range whose mark the ticks stream does not hold (the mark is written
        first): the tail of a session that died before the mark's block reached disk when
        the session never stopped, ends in a crashed segment, and its last record read is
        less than CRASH_WINDOW_NS before the snapshot; else the ticks stream lost the mark,
        and ticks with it."""
        res = self.result
        for (session, number), info in sorted(expect.items(), key=lambda kv: kv[1].wall_ns):
            if (session, number) in marks_seen:
                continue
            if start_ns is not None and info.wall_ns < start_ns:
                continue
            if end_ns is not None and info.wall_ns >= end_ns:
                continue        # its mark, at the same time, lies past the end read
            ends = last_of.get(session)
            unwritten = (session not in res.stops and ends is not None
                         and ends <= info.wall_ns <= ends + CRASH_WINDOW_NS
                         and not any(stream_of(p) == "ticks" for p in res.skipped)
                         and crashed(session))
            (res.marks_unwritten if unwritten else res.marks_lost).append(
                (session, number, info.wall_ns))

    def _gaps_past_end(self, res: ReplayResult, down: dict, start_ns: int | None, end_ns: int,
                       session: str | None) -> None:
        """A GAP record is written when the connection is back, after the outage. Look at
        the records from the end up to the first message or session boundary (at most two
        blocks) and report the gaps that overlap the range. What lies past the end is not
        part of the read: damage or a newer segment there ends the look, never the read (a
        gap not found stays reported open from its DISCONNECT). With several connections
        the first message may come from one that stayed up: an outage of another is then
        reported only from its DISCONNECT, when that lies in the range."""
        try:
            reader = WalReader(self.vdir, "ticks", start_ns=end_ns, on_corrupt="skip",
                               workers=1)
            for n, batch in enumerate(reader):
                for i in range(len(batch)):
                    k = int(batch.kind[i])
                    if k in MESSAGE_KINDS or k in (Kind.SESSION_START, Kind.SESSION_STOP):
                        return
                    if k != Kind.GAP:
                        continue
                    gap = _gap_entry(self._control(batch, i), session)
                    if (isinstance(gap["from_ns"], int) and isinstance(gap["to_ns"], int)
                            and gap_overlaps(gap, start_ns, end_ns)):
                        down.pop(gap["conn"], None)   # its real end replaces "not reconnected"
                        res.gaps.append(gap)
                if n >= 1:
                    return
        except (WalError, ReplayError) as exc:
            log.info("looking past the end of the range for a GAP record stopped: %s", exc)

    def _note_start(self, book_state: KiteBooks, token_filter, session: str | None,
                    stopped_at: int | None, start_ns: int) -> None:
        """start_books: the books as they stand when the read reaches the start, unless
        their session had stopped by then (nothing was being recorded: no books)."""
        books = self._books_of(book_state, token_filter)
        stopped = stopped_at is not None and stopped_at <= start_ns
        self.result.start_books = books[:0] if stopped else books
        self.result.start_session = session

    @staticmethod
    def _control(batch, i: int) -> dict:
        try:
            # strict_map_key=False: a map with integer keys is valid msgpack; the fields
            # replay reads are checked where they are used
            doc = msgpack.unpackb(batch.payload(i), raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ReplayError(f"{batch.segment}: control record {batch.first_record + i} is "
                              f"not msgpack: {exc}") from None
        if not isinstance(doc, dict):
            raise ReplayError(f"{batch.segment}: control record {batch.first_record + i} is "
                              "not a map")
        return doc

    def _run(self, batch, lo: int, hi: int, book_state: KiteBooks, start_ns, token_filter,
             want_books: bool, session: str | None) -> TickBatch | None:
        if batch.prepared is not None:
            # decoded in the reader's thread straight from the block (_rows_of_block)
            rows, rec, wall, conn = batch.prepared
            a, b = np.searchsorted(rec, (lo, hi)).tolist()
            rows, wall, conn = rows[a:b], wall[a:b], conn[a:b]
        else:
            binary = np.flatnonzero(batch.kind[lo:hi] == Kind.BINARY) + lo
            if not len(binary):
                return None
            rows, owner, bad = parse_many(batch.data, batch.offset[binary],
                                          batch.length[binary])
            self.result.bad_frames += len(bad)
            # take(): a plain gather, about half the cost of fancy indexing on this path
            rec = binary.take(owner)
            wall = batch.wall_ns.take(rec)
            conn = batch.conn.take(rec)
        if not len(rows):
            return None
        after = np.empty(len(rows), dtype=TICK_DTYPE) if want_books else None
        if start_ns is not None and wall[0] < start_ns:
            # Ticks before the start update the books but are not reported; at the start
            # instant the books are recorded as they stood.
            cut = int(np.searchsorted(wall, start_ns, side="left"))
            book_state.apply(rows[:cut], None if after is None else after[:cut])
            if cut < len(rows):
                self._note_start(book_state, token_filter, session, None, start_ns)
                book_state.apply(rows[cut:], None if after is None else after[cut:], wall[cut:])
        else:
            if start_ns is not None and self.result.start_books is None:
                self._note_start(book_state, token_filter, session, None, start_ns)
            book_state.apply(rows, after, wall)
        keep = np.ones(len(rows), dtype=bool)
        if start_ns is not None:
            keep &= wall >= start_ns
        if token_filter is not None:
            keep &= np.isin(rows["token"], token_filter)
        if not keep.any():
            return None
        if not keep.all():
            rows, wall, conn = rows[keep], wall[keep], conn[keep]
            after = after[keep] if after is not None else None
        self.result.ticks += len(rows)
        return TickBatch(rows, wall, conn, after, session)

    @staticmethod
    def _books_of(book_state: KiteBooks, token_filter) -> np.ndarray:
        state = book_state.state()
        return state if token_filter is None else state[np.isin(state["token"], token_filter)]

    def _harvest(self, book_state: KiteBooks, token_filter) -> None:
        """Fold the books' per-instrument tally into the summary (before the books reset)."""
        tally = book_state.tally()
        if token_filter is not None:
            tally = tally[np.isin(tally["token"], token_filter)]
        if not len(tally):
            return
        # Column lists, not a numpy scalar per field: a session of 9000 instruments is folded
        # in milliseconds. Both arrays are sorted by token and every tallied token has a book.
        state = book_state.state()
        rows = np.searchsorted(state["token"], tally["token"]).tolist()
        summaries = self.result.instruments
        for token, ticks, first, last, row in zip(
                tally["token"].tolist(), tally["ticks"].tolist(), tally["first_ns"].tolist(),
                tally["last_ns"].tolist(), rows):
            s = summaries.get(token)
            if s is None:
                s = summaries[token] = InstrumentSummary(token, first_wall_ns=first)
            s.ticks += ticks
            s.last_wall_ns = last
            s.book = state[row]

    def _check(self, book_state: KiteBooks, mark: tuple[str, int], wall: int,
               expect: dict[tuple[str, int], SnapshotInfo],
               missing: list[tuple[str, int, int]]) -> None:
        res = self.result
        info = expect.get(mark)
        if info is None:
            # Lost, or never written (the process died in between): _sort_missing tells
            missing.append((mark[0], mark[1], wall))
            return
        res.snapshots_checked += 1
        state = book_state.state()
        if state_hash(state) != info.hash:
            stored = load_snapshot(self.vdir, info, self.on_corrupt)
            res.mismatches.append(Mismatch(mark[0], mark[1], wall,
                                           _diff(state, stored.rows, self.names)))
