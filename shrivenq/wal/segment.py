"""One segment file: open and classify it, iterate its blocks, repair a torn tail.

A segment is in one of these states (``Segment.state``):

``closed``   it has a valid trailer and footer; its blocks come from the footer's index.
``open``     no footer, and the blocks run exactly to the end of the file (a writer is still
             appending, or it crashed between blocks).
``torn``     no footer, and after the last good block come bytes that are not a whole valid
             block (a crash mid-write). Readers stop at the last good block; repair truncates.
             A file shorter than a header that is the start of one (a segment being created,
             or a crash at that moment) is torn too, with no header and no blocks; repair
             removes it. So is a closed segment with bytes appended after its trailer: its
             blocks and footer are good (``footer`` is set), and repair cuts the extra bytes.
``corrupt``  something that a crash cannot explain: a bad header, a bad block followed by good
             ones, a footer or trailer that fails its checksum. Never modified by repair.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard

from shrivenq.errors import WalCorruptError, WalFormatError, WalIOError
from shrivenq.wal import format as fmt
from shrivenq.wal.records import RECORD_VERSION

log = logging.getLogger("shrivenq.wal")


@dataclass(frozen=True)
class BlockRef:
    """Where one block is and what its frame says."""

    segment: Path
    offset: int
    frame: fmt.Frame

    @property
    def block(self) -> int:
        return self.frame.block

    @property
    def end(self) -> int:
        return self.offset + self.frame.size


@dataclass
class Problem:
    """A corrupt spot: what the reader raises in on_corrupt="raise" and reports in "skip"."""

    segment: Path
    offset: int
    block: int
    reason: str

    def error(self) -> WalCorruptError:
        return WalCorruptError(self.segment, self.offset, self.block, self.reason)

    def __str__(self) -> str:
        return str(self.error())


@dataclass
class Segment:
    path: Path
    size: int
    header: fmt.SegmentHeader | None
    state: str                          # closed | open | torn | corrupt
    blocks: list[BlockRef]
    footer: fmt.Footer | None = None
    good_end: int = 0                   # end of the last good block (torn: the cut point)
    problems: list[Problem] = field(default_factory=list)

    @property
    def unclosed(self) -> bool:
        """No footer: being written, or left by a crash (only a directory's newest segment
        can be either), or cut short later."""
        return self.footer is None and self.state in ("open", "torn")

    def lost_end(self) -> str:
        """Why an unclosed segment with later segments after it lost data."""
        return (f"not closed, though later segments exist: what followed byte {self.good_end} "
                "was cut off or damaged after it was written (a crash leaves this only in a "
                "directory's newest segment)")

    @property
    def number(self) -> int:
        return self.header.segment if self.header else int(self.path.stem)

    @property
    def records(self) -> int:
        return sum(b.frame.records for b in self.blocks)


def _pread(fd: int, n: int, offset: int) -> bytes:
    out = os.pread(fd, n, offset)
    if len(out) == n:
        return out
    parts = [out]
    got = len(out)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _valid_block_at(fd: int, offset: int, size: int) -> fmt.Frame | None:
    frame = fmt.unpack_frame(_pread(fd, fmt.FRAME_SIZE, offset))
    if frame is None or offset + frame.size > size:
        return None
    if fmt.xxh3(_pread(fd, frame.stored_len, offset + fmt.FRAME_SIZE)) != frame.body_check:
        return None
    return frame


def _resync(fd: int, start: int, size: int) -> tuple[int, fmt.Frame] | None:
    """The first valid frame (block or footer) after ``start``, if any."""
    chunk = 1 << 22
    pos = start
    while pos < size:
        data = _pread(fd, min(chunk + 3, size - pos), pos)
        for magic in (fmt.BLOCK_MAGIC, fmt.FOOTER_MAGIC):
            i = data.find(magic)
            while i != -1:
                frame = _valid_block_at(fd, pos + i, size)
                if frame is not None:
                    return pos + i, frame
                i = data.find(magic, i + 1)
        pos += chunk
    return None


def open_segment(path: Path | str) -> Segment:
    """Read and classify a segment file (see the module docstring). Raises WalFormatError for
    a file that is not a segment or is too new, WalIOError if it cannot be read."""
    seg, fd = open_segment_held(path)
    os.close(fd)
    return seg


def open_segment_held(path: Path | str) -> tuple[Segment, int]:
    """``open_segment``, and the descriptor it read, left open for reading the blocks: the
    blocks are then read from the very file classified, even if compaction replaces the
    segment meanwhile. The caller closes the descriptor."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise WalIOError(path, exc.strerror or str(exc)) from None
    try:
        return classify(fd, path), fd
    except BaseException:
        os.close(fd)
        raise


def classify(fd: int, path: Path) -> Segment:
    """The Segment of the file open at ``fd`` (``path`` names it in what it reports)."""
    size = os.fstat(fd).st_size
    head = _pread(fd, fmt.HEADER_SIZE, 0)
    if size < fmt.HEADER_SIZE and _is_header_prefix(head):
        # A segment whose header is not written yet: a writer creating it right now, or what
        # a crash at that moment left. It holds nothing; a reader passes it as a torn tail.
        return Segment(path, size, None, "torn", [], good_end=0)
    try:
        header = fmt.unpack_header(head, str(path))
    except fmt.HeaderError as exc:
        seg = Segment(path, size, None, "corrupt", [], good_end=0)
        seg.problems.append(Problem(path, 0, -1, f"segment header: {exc}"))
        return seg
    # A valid trailer means a footer: everything then comes from (and is checked against) it.
    if size >= fmt.HEADER_SIZE + fmt.FRAME_SIZE + fmt.TRAILER_SIZE:
        footer_at = fmt.unpack_trailer(_pread(fd, fmt.TRAILER_SIZE, size - fmt.TRAILER_SIZE))
        if footer_at is not None:
            return _with_footer(fd, path, size, header, footer_at)
    return _scan(fd, path, size, header)


def _with_footer(fd, path, size, header, footer_at) -> Segment:
    seg = Segment(path, size, header, "closed", [])
    frame = fmt.unpack_frame(_pread(fd, fmt.FRAME_SIZE, footer_at))
    problem = None
    if frame is None or frame.magic != fmt.FOOTER_MAGIC:
        problem = "footer frame header is damaged"
    elif footer_at + frame.size + fmt.TRAILER_SIZE != size:
        problem = "footer length disagrees with the trailer"
    else:
        body = _pread(fd, frame.stored_len, footer_at + fmt.FRAME_SIZE)
        if fmt.xxh3(body) != frame.body_check:
            problem = "footer checksum mismatch"
        else:
            try:
                seg.footer = fmt.unpack_footer(body)
            except WalFormatError as exc:
                raise WalFormatError(f"{path}: {exc}") from None
            except Exception as exc:
                problem = f"footer does not decode: {exc}"
    if problem is not None:
        # Fall back to scanning so the blocks stay readable, but flag the segment.
        seg = _scan(fd, path, footer_at, header)
        seg.size = size
        seg.state = "corrupt"
        seg.problems.append(Problem(path, footer_at, -1, problem))
        return seg
    idx = seg.footer.index
    expect = fmt.HEADER_SIZE
    first = 0
    for i, row in enumerate(idx):
        off, sz = int(row["offset"]), int(row["size"])
        if off != expect or int(row["first_record"]) != first:
            seg.state = "corrupt"
            seg.problems.append(Problem(path, off, i, "footer index is inconsistent"))
            break
        expect, first = off + sz, first + int(row["records"])
    if expect != footer_at and seg.state == "closed":
        seg.state = "corrupt"
        seg.problems.append(Problem(path, expect, len(idx), "footer index does not reach "
                                    "the footer"))
    # Frames are read lazily; here the index provides what the reader needs to seek.
    for i, row in enumerate(idx):
        frame = fmt.Frame(fmt.BLOCK_MAGIC, -1, 0, i, int(row["size"]) - fmt.FRAME_SIZE, 0,
                          int(row["records"]), int(row["min_wall_ns"]), int(row["max_wall_ns"]),
                          int(row["first_record"]), 0)
        seg.blocks.append(BlockRef(path, int(row["offset"]), frame))
    seg.good_end = footer_at
    return seg


def _scan(fd, path, size, header) -> Segment:
    """Walk the frames from the header on; classify what stops the walk."""
    seg = Segment(path, size, header, "open", [])
    pos = fmt.HEADER_SIZE
    first = 0
    while pos < size:
        frame = _valid_block_at(fd, pos, size)
        if frame is None or frame.magic != fmt.BLOCK_MAGIC:
            break
        if frame.block != len(seg.blocks) or frame.first_record != first:
            seg.problems.append(Problem(path, pos, len(seg.blocks),
                                        f"block number {frame.block} / first record "
                                        f"{frame.first_record} out of sequence"))
            seg.state = "corrupt"
            break
        seg.blocks.append(BlockRef(path, pos, frame))
        first += frame.records
        pos += frame.size
    seg.good_end = pos
    if pos >= size or seg.state == "corrupt":
        return seg
    frame = _valid_block_at(fd, pos, size)
    if frame is not None and frame.magic == fmt.FOOTER_MAGIC:
        end = pos + frame.size + fmt.TRAILER_SIZE
        if end > size:
            seg.state = "torn"      # crashed while writing the trailer
            return seg
        if end < size and fmt.unpack_trailer(
                _pread(fd, fmt.TRAILER_SIZE, end - fmt.TRAILER_SIZE)) == pos:
            # A whole closed segment with bytes after its trailer (appended to it later):
            # every block is good; the extra bytes are a tail to cut, like a torn one.
            closed = _with_footer(fd, path, end, header, pos)
            if closed.state == "closed":
                closed.state, closed.size, closed.good_end = "torn", size, end
                return closed
        seg.state = "corrupt"
        seg.problems.append(Problem(path, end - fmt.TRAILER_SIZE, -1,
                                    "segment trailer (after the footer) is damaged"))
        return seg
    later = _resync(fd, pos + 1, size)
    if later is not None:
        seg.state = "corrupt"
        seg.problems.append(Problem(path, pos, len(seg.blocks),
                                    f"bad block frame (a good frame follows at byte "
                                    f"{later[0]})"))
        # Keep going after the bad spot so skip mode can read on.
        rest = _scan_from(fd, path, size, later[0], later[1])
        seg.blocks.extend(rest)
        return seg
    seg.state = "torn"
    return seg


def _scan_from(fd, path, size, pos, frame) -> list[BlockRef]:
    out = []
    while frame is not None and frame.magic == fmt.BLOCK_MAGIC:
        out.append(BlockRef(path, pos, frame))
        pos += frame.size
        if pos >= size:
            break
        frame = _valid_block_at(fd, pos, size)
    return out


# ---------------------------------------------------------------------------- reading blocks

# The newest record-format version this reader knows, per kind (kinds it does not know:
# any version; storage keeps what callers give it).
_MAX_VERSION = np.full(256, 255, dtype=np.uint8)
for _k, _v in RECORD_VERSION.items():
    _MAX_VERSION[_k] = _v


def read_block(fd: int, ref: BlockRef, dctx: zstandard.ZstdDecompressor,
               defer_unpack: bool = False) -> fmt.Columns:
    """Read, verify and decode one block; raises WalCorruptError naming segment/offset/block,
    WalFormatError if it holds a record of a newer record-format version than this reader
    knows. ``defer_unpack``: as ``format.decode_body``'s."""
    cols = _read_block(fd, ref, dctx, defer_unpack)
    newer = cols.version > _MAX_VERSION[cols.kind]
    if newer.any():
        i = int(np.argmax(newer))
        kind, version = int(cols.kind[i]), int(cols.version[i])
        raise WalFormatError(f"{ref.segment}: block {ref.block} at byte {ref.offset}: record "
                             f"kind {kind} version {version} is newer than this reader (knows "
                             f"up to {int(_MAX_VERSION[kind])}); upgrade shrivenq")
    return cols


def _read_block(fd: int, ref: BlockRef, dctx: zstandard.ZstdDecompressor,
                defer_unpack: bool = False) -> fmt.Columns:
    try:
        data = _pread(fd, ref.frame.size, ref.offset)
    except OSError as exc:
        raise WalIOError(ref.segment, exc.strerror or str(exc)) from None
    frame = fmt.unpack_frame(data)
    try:
        if frame is None or frame.magic != fmt.BLOCK_MAGIC:
            raise ValueError("bad block frame header (magic or checksum)")
        if (frame.block != ref.frame.block or frame.size != ref.frame.size
                or frame.records != ref.frame.records
                or frame.first_record != ref.frame.first_record
                or frame.min_wall_ns != ref.frame.min_wall_ns
                or frame.max_wall_ns != ref.frame.max_wall_ns):
            raise ValueError("block frame disagrees with the footer index")
        return fmt.decompress_body(frame, memoryview(data)[fmt.FRAME_SIZE:], dctx,
                                   defer_unpack)
    except ValueError as exc:
        raise WalCorruptError(ref.segment, ref.offset, ref.block, str(exc)) from None
    except WalFormatError as exc:
        raise WalFormatError(f"{ref.segment}: block {ref.block} at byte {ref.offset}: "
                             f"{exc}") from None


# ---------------------------------------------------------------------------- repair

@dataclass
class RepairReport:
    """What recovery did to one segment."""

    path: Path
    action: str                 # "footer rebuilt" | "removed (no blocks)" | "left as is"
    kept_blocks: int = 0
    kept_records: int = 0
    kept_bytes: int = 0
    dropped_bytes: int = 0
    dropped_blocks: int = 0     # whole or partial blocks cut away (0 or 1 in practice)
    dropped_records: int | None = None   # unknown when the torn block's frame is unreadable
    reason: str = ""

    def __str__(self) -> str:
        s = (f"{self.path}: {self.action}; kept {self.kept_blocks} blocks, "
             f"{self.kept_records} records, {self.kept_bytes} bytes; dropped "
             f"{self.dropped_bytes} bytes")
        if self.dropped_bytes:
            recs = "?" if self.dropped_records is None else self.dropped_records
            s += f" ({self.dropped_blocks} partial block, {recs} records)"
        return s + (f" ({self.reason})" if self.reason else "")


def build_footer(path: Path, blocks: list[BlockRef], fd: int | None = None,
                 recovered: dict | None = None) -> fmt.Footer:
    """A footer for ``blocks``, decoding each one for its per-instrument counts."""
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY)
    try:
        dctx = zstandard.ZstdDecompressor()
        acc = FooterAccumulator()
        for ref in blocks:
            cols = read_block(fd, ref, dctx)
            acc.add(ref.offset, ref.frame.size, cols)
        return acc.footer(recovered)
    finally:
        if own:
            os.close(fd)


class FooterAccumulator:
    """Collects what a footer says, one block at a time (cheap per block: the per-instrument
    counting happens once, when the footer is built)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.records = 0
        self.first_wall = self.last_wall = self.first_mono = self.last_mono = None
        self.payload_bytes = 0
        self.stored_bytes = 0
        self._kinds = np.zeros(256, dtype=np.int64)
        self._keys: list[np.ndarray] = []

    def add(self, offset: int, size: int, cols: fmt.Columns) -> None:
        n = len(cols.kind)
        lo = int(cols.wall_ns.min()) if n else 0
        hi = int(cols.wall_ns.max()) if n else 0
        self.rows.append((offset, size, n, self.records, lo, hi))
        self.records += n
        self.stored_bytes += size
        self.payload_bytes += len(cols.payloads)
        if n:
            mlo, mhi = int(cols.mono_ns.min()), int(cols.mono_ns.max())
            self.first_wall = lo if self.first_wall is None else min(self.first_wall, lo)
            self.last_wall = hi if self.last_wall is None else max(self.last_wall, hi)
            self.first_mono = mlo if self.first_mono is None else min(self.first_mono, mlo)
            self.last_mono = mhi if self.last_mono is None else max(self.last_mono, mhi)
            self._kinds += np.bincount(cols.kind, minlength=256)
        if len(cols.inst_keys):
            self._keys.append(np.array(cols.inst_keys, dtype=np.uint64))

    @property
    def kinds(self) -> dict[int, int]:
        nz = np.flatnonzero(self._kinds)
        return dict(zip(nz.tolist(), self._kinds[nz].tolist()))

    @property
    def instruments(self) -> dict[int, int]:
        if not self._keys:
            return {}
        keys, counts = np.unique(np.concatenate(self._keys), return_counts=True)
        self._keys = [np.repeat(keys, counts)] if len(self._keys) > 1 else self._keys
        return dict(zip(keys.tolist(), counts.tolist()))

    def footer(self, recovered: dict | None = None) -> fmt.Footer:
        index = np.array(self.rows, dtype=fmt.INDEX_DTYPE)
        return fmt.Footer(len(self.rows), self.records, self.first_wall, self.last_wall,
                          self.first_mono, self.last_mono, self.payload_bytes,
                          self.stored_bytes, self.kinds, self.instruments, index,
                          time.time_ns(), recovered)


def footer_bytes(footer: fmt.Footer, offset: int, nblocks: int) -> bytes:
    body = footer.pack()
    frame = fmt.pack_frame(fmt.FOOTER_MAGIC, 0, 0, nblocks, body, len(body), footer.records,
                           footer.first_wall_ns or 0, footer.last_wall_ns or 0, 0)
    return frame + body + fmt.pack_trailer(offset)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_segment(path: Path | str) -> RepairReport | None:
    """Make a crashed (footer-less) segment whole: cut the torn tail after the last good
    block, append a rebuilt footer, fsync. Returns None if the segment needs nothing
    (already closed). Never rewrites a good block; a segment damaged in a way a crash cannot
    explain is left as is and reported."""
    path = Path(path)
    seg = open_segment(path)
    if seg.header is None and seg.state == "torn":
        # Not even a whole header: a crash while creating the segment, nothing in it.
        path.unlink()
        fsync_dir(path.parent)
        return RepairReport(path, "removed (no blocks)", dropped_bytes=seg.size,
                            reason="crash while creating the segment")
    if seg.state == "closed":
        return None
    if seg.state == "corrupt":
        if seg.header is None and not seg.blocks and _no_frames(path):
            # header torn in its own write (power loss); there is nothing after it
            size = seg.size
            path.unlink()
            fsync_dir(path.parent)
            return RepairReport(path, "removed (no blocks)", dropped_bytes=size,
                                reason="damaged header and no blocks")
        return RepairReport(path, "left as is", len(seg.blocks), seg.records,
                            reason="; ".join(str(p) for p in seg.problems))
    if seg.footer is not None:
        # Closed, with bytes after its trailer: cut them; nothing before them changes.
        cut = seg.size - seg.good_end
        try:
            fd = os.open(path, os.O_RDWR)
            try:
                os.ftruncate(fd, seg.good_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise WalIOError(path, f"repair failed: {exc.strerror or exc}") from None
        report = RepairReport(path, "bytes after the trailer cut", len(seg.blocks),
                              seg.records, seg.good_end - fmt.HEADER_SIZE, cut,
                              reason="the segment was closed; its footer is kept")
        log.warning("WAL recovery: %s", report)
        return report
    dropped = seg.size - seg.good_end
    dropped_records = 0
    if dropped:
        with open(path, "rb") as f:
            f.seek(seg.good_end)
            frame = fmt.unpack_frame(f.read(fmt.FRAME_SIZE))
        dropped_records = frame.records if frame is not None else None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise WalIOError(path, exc.strerror or str(exc)) from None
    try:
        footer = build_footer(path, seg.blocks, fd, recovered={
            "dropped_bytes": dropped, "dropped_records": dropped_records,
            "repaired_ns": time.time_ns()})
        if seg.header is not None:
            footer.format = seg.header.version
        if dropped:
            os.ftruncate(fd, seg.good_end)
            os.fsync(fd)
        tail = footer_bytes(footer, seg.good_end, len(seg.blocks))
        os.pwrite(fd, tail, seg.good_end)
        os.fsync(fd)
    except OSError as exc:
        raise WalIOError(path, f"repair failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    report = RepairReport(path, "footer rebuilt", len(seg.blocks), seg.records,
                          seg.good_end - fmt.HEADER_SIZE, dropped, 1 if dropped else 0,
                          dropped_records, "torn tail cut" if dropped else "")
    log.warning("WAL recovery: %s", report)
    return report


def _is_header_prefix(data: bytes) -> bool:
    """The first bytes of a file shorter than a header: what a segment's header write leaves
    when it is cut short (its magic so far, or zeros where a power cut lost the write)."""
    return data[:8] == fmt.MAGIC[:len(data[:8])] or not data.strip(b"\0")


def _no_frames(path: Path) -> bool:
    data = path.read_bytes()[fmt.HEADER_SIZE:]
    return fmt.BLOCK_MAGIC not in data
