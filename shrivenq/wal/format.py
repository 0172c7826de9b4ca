"""The on-disk format of a WAL segment: header, block frames, block bodies, footer, trailer.

Pure functions of bytes, no I/O. docs/WAL_FORMAT.md is the prose version of this module;
keep the two in step. All integers are little-endian.

    segment  = header block* [footer trailer]
    header   = 96 bytes, see HEADER
    block    = frame header (64 bytes, see FRAME) + body (stored_len bytes, zstd frame)
    footer   = frame header with magic b"WFTR" + msgpack map (uncompressed)
    trailer  = footer offset (u64) + b"SHRVEND\\0" + xxh3_64 of those 16 bytes
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import xxhash
import zstandard

from shrivenq.errors import WalFormatError

MAGIC = b"SHRVQWAL"
# 2: blocks' instrument keys as a dictionary (FLAG_KEY_DICT); version 1 segments still read.
FORMAT_VERSION = 2

# magic, format version, header size, segment number, created (wall ns), day (YYYYMMDD),
# tz offset (seconds east of UTC), venue, stream, reserved, xxh3_64 of bytes 0..88
HEADER = struct.Struct("<8sHHIqIi32s16s8sQ")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 96

BLOCK_MAGIC = b"WBLK"
FOOTER_MAGIC = b"WFTR"
# magic, codec, flags, reserved, block number, stored length, raw length, records,
# min wall ns, max wall ns, first record (index in segment), xxh3_64 of the body,
# xxh3_64 of bytes 0..56 of this frame header
FRAME = struct.Struct("<4sBBHIIIIqqQQQ")
FRAME_SIZE = FRAME.size
assert FRAME_SIZE == 64

TRAILER_MAGIC = b"SHRVEND\0"
TRAILER = struct.Struct("<Q8sQ")
TRAILER_SIZE = TRAILER.size

FLAG_INSTRUMENTS = 1        # the caller gave instrument keys for this block's records
FLAG_KEY_DICT = 2           # those keys are stored as distinct keys + per-key id planes
KNOWN_BLOCK_FLAGS = FLAG_INSTRUMENTS | FLAG_KEY_DICT

CODEC_PLAIN = 0             # payloads concatenated as received, then the body is zstd'd
CODEC_TICK_DELTA = 1        # payloads through shrivenq._ext.tick_delta.pack, then zstd
CODEC_NAMES = {CODEC_PLAIN: "plain", CODEC_TICK_DELTA: "tick_delta"}

BODY_PREAMBLE = struct.Struct("<IIQ")   # records, instrument keys, payload bytes (original)

#: One row of the footer's block index.
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("size", "<u4"), ("records", "<u4"),
                        ("first_record", "<u8"), ("min_wall_ns", "<i8"),
                        ("max_wall_ns", "<i8")])

MAX_BLOCK_RAW = 1 << 31     # a block body never exceeds this (u32 lengths, sanity bound)

try:  # the other half of issue 3: the tick-aware transform (Cython)
    from shrivenq._ext import tick_delta as _tick_delta
except ImportError:  # not built yet: codec 1 is neither written nor readable
    _tick_delta = None
try:
    from shrivenq._ext.key_dict import expand_keys as _expand_keys
    from shrivenq._ext.key_dict import key_dictionary as _key_dictionary
except ImportError:  # not built yet: numpy's sort gives the same dictionary, slower
    _key_dictionary = _expand_keys = None


def tick_delta_available() -> bool:
    return _tick_delta is not None


def default_codec() -> int:
    return CODEC_TICK_DELTA if _tick_delta is not None else CODEC_PLAIN


def xxh3(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


# ---------------------------------------------------------------------------- header

@dataclass(frozen=True)
class SegmentHeader:
    segment: int
    created_ns: int
    day: int                # YYYYMMDD
    tz_offset_s: int
    venue: str
    stream: str
    version: int = FORMAT_VERSION

    def pack(self) -> bytes:
        venue, stream = self.venue.encode(), self.stream.encode()
        if len(venue) > 32 or len(stream) > 16:
            raise ValueError("venue is at most 32 bytes, stream at most 16")
        head = HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, self.segment, self.created_ns,
                           self.day, self.tz_offset_s, venue, stream, b"\0" * 8, 0)
        return head[:-8] + struct.pack("<Q", xxh3(head[:-8]))


class HeaderError(Exception):
    """Internal: the header is damaged (checksum); the caller knows the path."""


def unpack_header(data: bytes, where: str) -> SegmentHeader:
    """Raises WalFormatError for a file that is not a segment or is too new, HeaderError for
    a header whose checksum fails."""
    if len(data) < 12 or data[:8] != MAGIC:
        raise WalFormatError(f"{where}: not a shrivenq WAL segment (bad magic)")
    version, size = struct.unpack_from("<HH", data, 8)
    if version > FORMAT_VERSION:
        raise WalFormatError(f"{where}: WAL format version {version} is newer than this "
                             f"reader (knows up to {FORMAT_VERSION}); upgrade shrivenq")
    if version == 0 or size != HEADER_SIZE:
        raise HeaderError(f"header claims version {version}, size {size}")
    if len(data) < HEADER_SIZE:
        raise WalFormatError(f"{where}: truncated segment header ({len(data)} of "
                             f"{HEADER_SIZE} bytes)")
    (_, version, _, segment, created, day, tz, venue, stream, _,
     check) = HEADER.unpack_from(data, 0)
    if xxh3(data[:HEADER_SIZE - 8]) != check:
        raise HeaderError("header checksum mismatch")
    return SegmentHeader(segment, created, day, tz, venue.rstrip(b"\0").decode(errors="replace"),
                         stream.rstrip(b"\0").decode(errors="replace"), version)


# ---------------------------------------------------------------------------- frames

@dataclass(frozen=True)
class Frame:
    magic: bytes
    codec: int
    flags: int
    block: int
    stored_len: int
    raw_len: int
    records: int
    min_wall_ns: int
    max_wall_ns: int
    first_record: int
    body_check: int

    @property
    def size(self) -> int:
        return FRAME_SIZE + self.stored_len


def pack_frame(magic: bytes, codec: int, flags: int, block: int, body: bytes, raw_len: int,
               records: int, min_wall: int, max_wall: int, first_record: int) -> bytes:
    head = FRAME.pack(magic, codec, flags, 0, block, len(body), raw_len, records, min_wall,
                      max_wall, first_record, xxh3(body), 0)
    return head[:-8] + struct.pack("<Q", xxh3(head[:-8]))


def unpack_frame(data) -> Frame | None:
    """The frame header at the start of ``data``, or None if it is not one (short, bad magic,
    bad checksum, or impossible lengths)."""
    if len(data) < FRAME_SIZE:
        return None
    (magic, codec, flags, reserved, block, stored, raw, records, lo, hi, first, body_check,
     check) = FRAME.unpack_from(data, 0)
    if magic not in (BLOCK_MAGIC, FOOTER_MAGIC) or xxh3(bytes(data[:FRAME_SIZE - 8])) != check:
        return None
    if reserved != 0 or raw > MAX_BLOCK_RAW or stored > MAX_BLOCK_RAW:
        return None
    return Frame(magic, codec, flags, block, stored, raw, records, lo, hi, first, body_check)


def pack_trailer(footer_offset: int) -> bytes:
    head = struct.pack("<Q8s", footer_offset, TRAILER_MAGIC)
    return head + struct.pack("<Q", xxh3(head))


def unpack_trailer(data: bytes) -> int | None:
    """The footer offset a trailer names, or None if these bytes are not a valid trailer."""
    if len(data) != TRAILER_SIZE:
        return None
    offset, magic, check = TRAILER.unpack(data)
    if magic != TRAILER_MAGIC or xxh3(data[:16]) != check:
        return None
    return offset


# ---------------------------------------------------------------------------- block bodies

@dataclass
class Columns:
    """A block's records, column-wise; what the writer encodes and the reader decodes."""

    kind: np.ndarray         # u8[n]
    version: np.ndarray      # u8[n]
    conn: np.ndarray         # u32[n]
    wall_ns: np.ndarray      # i64[n]
    mono_ns: np.ndarray      # i64[n]
    length: np.ndarray       # u32[n]
    payloads: Any            # sum(length) bytes, the payloads back to back (bytes-like),
                             # or PackedPayloads (decode_body's defer_unpack)
    inst_count: np.ndarray   # u32[n]: instrument keys per record
    inst_keys: np.ndarray    # u64[sum(inst_count)]
    has_instruments: bool = False

    def __len__(self) -> int:
        return len(self.kind)


# zstd's levels: its fastest (ZSTD_minCLevel) to its strongest; 0 is its default, 3.
MIN_LEVEL = -(1 << 17)
MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL


def is_level(level) -> bool:
    """Is ``level`` a zstd compression level (an int, not a bool, in range)?"""
    return type(level) is int and MIN_LEVEL <= level <= MAX_LEVEL


def concat_columns(parts: list[Columns]) -> Columns:
    """Several blocks' records as one, in order (``has_instruments`` from the first)."""
    if len(parts) == 1:
        return parts[0]
    c = Columns(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                  ("kind", "version", "conn", "wall_ns", "mono_ns", "length")),
                b"".join(p.payloads for p in parts),
                np.concatenate([p.inst_count for p in parts]),
                np.concatenate([p.inst_keys for p in parts]))
    c.has_instruments = parts[0].has_instruments
    return c


def key_id_width(distinct: int) -> int:
    """Bytes of each key id (a byte plane each) for ``distinct`` keys: 1 up to 256, ..."""
    width = 1
    while width < 4 and distinct > 1 << (8 * width):
        width += 1
    return width


def encode_keys(keys: np.ndarray) -> bytes:
    """Instrument keys (u64[m]) as FLAG_KEY_DICT stores them: u32 count of distinct keys,
    the distinct keys ascending (u64), then each key's index among them as byte planes,
    most significant first. A block repeats a few hundred tokens thousands of times: this
    is a third of the bytes of plain u64 keys and zstd decompresses it several times
    faster."""
    if not len(keys):
        return struct.pack("<I", 0)
    if _key_dictionary is not None:
        distinct, ids = _key_dictionary(keys)
    else:
        distinct, ids = np.unique(keys, return_inverse=True)
        ids = ids.astype(np.uint32).ravel()
    width = key_id_width(len(distinct))
    planes = [((ids >> (8 * b)) & 0xFF).astype(np.uint8).tobytes()
              for b in reversed(range(width))]
    return b"".join([struct.pack("<I", len(distinct)), distinct.astype("<u8").tobytes(),
                     *planes])


def encode_body(cols: Columns, codec: int) -> bytes:
    """The raw (pre-zstd) body: preamble, then wall deltas i64, (mono - wall) deltas i64,
    instrument keys (encode_keys when the block has them, which block_frame flags
    FLAG_KEY_DICT), conn u32, length u32, instrument count u32, kind u8, version u8, then the
    payloads through the codec."""
    n = len(cols.kind)
    wall = np.ascontiguousarray(cols.wall_ns, dtype="<i8")
    skew = np.ascontiguousarray(cols.mono_ns, dtype="<i8") - wall
    lengths = np.ascontiguousarray(cols.length, dtype="<u4")
    if codec == CODEC_TICK_DELTA:
        if _tick_delta is None:
            raise WalFormatError("codec 1 (tick_delta) needs shrivenq._ext.tick_delta; "
                                 "run `make build`")
        packed = _tick_delta.pack(cols.payloads, lengths)
    elif codec == CODEC_PLAIN:
        packed = cols.payloads
    else:
        raise ValueError(f"unknown codec {codec}")
    keys = np.ascontiguousarray(cols.inst_keys, dtype="<u8")
    parts = [
        BODY_PREAMBLE.pack(n, len(keys), len(cols.payloads)),
        np.diff(wall, prepend=np.int64(0)).tobytes(),
        np.diff(skew, prepend=np.int64(0)).tobytes(),
        encode_keys(keys) if cols.has_instruments else keys.tobytes(),
        np.ascontiguousarray(cols.conn, dtype="<u4").tobytes(),
        lengths.tobytes(),
        np.ascontiguousarray(cols.inst_count, dtype="<u4").tobytes(),
        np.ascontiguousarray(cols.kind, dtype="u1").tobytes(),
        np.ascontiguousarray(cols.version, dtype="u1").tobytes(),
        packed,
    ]
    return b"".join(parts)


class PackedPayloads:
    """A tick_delta block's payloads not yet unpacked: ``packed`` (the transform's output,
    checksummed with the block but not yet checked as a transform) and the records'
    ``lengths``. ``unpack()`` gives the payloads back to back, checking the transform (a
    ValueError names what is wrong); a reader that decodes ``packed`` its own way, as
    strictly, sets ``checked``."""

    __slots__ = ("packed", "lengths", "checked", "_payloads", "_starts", "_raw_at")

    def __init__(self, packed, lengths: np.ndarray):
        self.packed, self.lengths = packed, lengths
        self.checked = False
        self._payloads = self._starts = self._raw_at = None

    def unpack(self) -> bytes:
        if self._payloads is None:
            self._payloads = _tick_delta.unpack(self.packed, self.lengths)
            self.checked = True
        return self._payloads

    def verbatim(self, offset: int, length: int) -> bytes | None:
        """The payload at ``offset`` of the unpacked payloads if the block keeps it verbatim
        (a control record, say), read in place without unpacking the frames; else None.
        Only for a checked block, whose sections are known to be where its header says."""
        if self._payloads is not None or not self.checked:
            return None
        if length == 0:
            return b""
        if self._starts is None:
            # Made once a block: where each payload starts among the unpacked payloads, and
            # where each verbatim one starts in the block (after the 36-byte header and one
            # tag a payload, the verbatim payloads back to back).
            n = len(self.lengths)
            tags = np.frombuffer(self.packed, dtype=np.uint8, count=n, offset=36)
            self._starts = np.zeros(n, dtype=np.uint64)
            np.cumsum(self.lengths[:-1], out=self._starts[1:])
            kept = np.where(tags == 0, self.lengths, 0).astype(np.uint64)
            self._raw_at = np.full(n, -1, dtype=np.int64)
            self._raw_at[tags == 0] = (36 + n + np.cumsum(kept) - kept)[tags == 0]
        i = int(np.searchsorted(self._starts, offset, side="right")) - 1
        if i < 0 or int(self._starts[i]) != offset or self._raw_at[i] < 0:
            return None
        at = int(self._raw_at[i])
        return bytes(self.packed[at:at + length])


def _aligned(column: np.ndarray) -> np.ndarray:
    return column if column.flags.aligned else column.copy()


def decode_body(raw: bytes, records: int, codec: int, flags: int,
                defer_unpack: bool = False) -> Columns:
    """Inverse of encode_body. Raises ValueError when the body is inconsistent and
    WalFormatError for a codec this reader does not know. ``defer_unpack``: a tick_delta
    block's payloads come back as ``PackedPayloads``, for the caller to unpack or decode."""
    if len(raw) < BODY_PREAMBLE.size:
        raise ValueError("body shorter than its preamble")
    n, m, payload_len = BODY_PREAMBLE.unpack_from(raw, 0)
    if n != records:
        raise ValueError(f"body holds {n} records, frame says {records}")
    pos = BODY_PREAMBLE.size
    per_record = n * (8 + 8 + 4 + 4 + 4 + 1 + 1)
    distinct = width = 0
    if flags & FLAG_KEY_DICT:
        if not flags & FLAG_INSTRUMENTS:
            raise ValueError("block flags mark an instrument key dictionary but no keys")
        if pos + per_record + 4 > len(raw):
            raise ValueError("body shorter than its columns")
        (distinct,) = struct.unpack_from("<I", raw, pos + 16 * n)
        if distinct > m or (m and not distinct):
            raise ValueError(f"{distinct} distinct instrument keys for {m} keys")
        width = key_id_width(distinct)
        keys_size = 4 + 8 * distinct + width * m
    else:
        keys_size = 8 * m
    fixed = pos + per_record + keys_size
    if fixed > len(raw):
        raise ValueError("body shorter than its columns")
    buf = np.frombuffer(raw, dtype=np.uint8)

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal pos
        dt = np.dtype(dtype)
        out = buf[pos:pos + count * dt.itemsize].view(dt)
        pos += count * dt.itemsize
        return out

    # The columns are views into the body, at offsets its variable-length parts leave
    # unaligned. numpy works on unaligned data through slower loops, and the compiled
    # readers (tick_delta, the Binance and Kite replay loops) take the uint32 columns as
    # arrays, which C assumes aligned (a vectorised loop may fault on one that is not): a
    # column that is not aligned is copied first.
    # Adjacent columns of one type are taken, copied and summed together: each numpy call
    # costs microseconds, several percent of a replay of the block.
    wall, mono = np.add.accumulate(_aligned(take("<i8", 2 * n)).reshape(2, n), axis=1,
                                   dtype=np.int64)
    mono += wall
    if flags & FLAG_KEY_DICT:
        pos += 4
        table = _aligned(take("<u8", distinct))
        planes = take("u1", width * m)
        # A table that is not ascending is refused (by _expand_keys, or here): the writer
        # never makes one; a reader that took it would still give each record its keys, but
        # a block that breaks the format is not trusted for anything.
        if _expand_keys is not None:
            keys = _expand_keys(table, planes, m)
        else:
            if distinct > 1 and not bool((table[1:] > table[:-1]).all()):
                raise ValueError("instrument key dictionary is not ascending and distinct")
            planes = planes.reshape(width, m)
            ids = planes[0].astype(np.uint32)
            for plane in planes[1:]:
                ids = (ids << 8) | plane
            if m and int(ids.max()) >= distinct:
                raise ValueError(f"instrument key id {int(ids.max())} past the {distinct} keys")
            keys = table.take(ids)
    else:
        keys = _aligned(take("<u8", m))
    u32 = _aligned(take("<u4", 3 * n)).reshape(3, n)
    conn, length, inst_count = u32
    kind, version = take("u1", 2 * n).reshape(2, n)
    total_length, total_count = u32[1:].astype(np.uint64).sum(axis=1).tolist()
    if total_length != payload_len:
        raise ValueError("record lengths do not add up to the payload size")
    if total_count != m:
        raise ValueError("instrument counts do not add up to the instrument keys")
    packed = memoryview(raw)[pos:]
    if codec == CODEC_PLAIN:
        payloads = packed
    elif codec == CODEC_TICK_DELTA:
        if _tick_delta is None:
            raise WalFormatError("block uses codec 1 (tick_delta) but shrivenq._ext.tick_delta "
                                 "is not built; run `make build`")
        have = getattr(_tick_delta, "FORMAT_VERSION", None)
        if (have is not None and len(packed) >= 3 and packed[:2] == b"TD"
                and packed[2] != have):
            # The block passed its checksum, so this is not damage: the transform's own
            # format moved on (or back). Refuse clearly rather than call it corrupt.
            raise WalFormatError(f"block was written with tick_delta format v{packed[2]}; "
                                 f"this build of shrivenq._ext.tick_delta reads v{have}")
        if defer_unpack:
            # The transform checks that the lengths add up to what it decodes, and they
            # were checked against payload_len above.
            return Columns(kind, version, conn, wall, mono, length,
                           PackedPayloads(packed, np.ascontiguousarray(length)), inst_count,
                           keys, bool(flags & FLAG_INSTRUMENTS))
        payloads = _tick_delta.unpack(packed, np.ascontiguousarray(length))
    else:
        raise WalFormatError(f"block codec {codec} is newer than this reader "
                             f"(knows {sorted(CODEC_NAMES)}); upgrade shrivenq")
    if len(payloads) != payload_len:
        raise ValueError(f"payloads decode to {len(payloads)} bytes, expected {payload_len}")
    return Columns(kind, version, conn, wall, mono, length, payloads, inst_count, keys,
                   bool(flags & FLAG_INSTRUMENTS))


# ---------------------------------------------------------------------------- footer

@dataclass
class Footer:
    """What a cleanly closed (or repaired) segment says about itself."""

    blocks: int
    records: int
    first_wall_ns: int | None
    last_wall_ns: int | None
    first_mono_ns: int | None
    last_mono_ns: int | None
    payload_bytes: int
    stored_bytes: int
    kinds: dict[int, int]
    instruments: dict[int, int]
    index: np.ndarray                   # INDEX_DTYPE
    closed_ns: int = 0
    recovered: dict[str, Any] | None = None
    # Keys this build does not know (a later build's), kept as they were when the footer is
    # rewritten (compaction).
    extra: dict[str, Any] = field(default_factory=dict)
    # Set when compaction rewrote the segment (wal/compact.py): the blocks and stored bytes
    # it had, and when.
    compacted: dict[str, Any] | None = None
    # The zstd level the writer was set to (None in footers of older builds and of
    # recovery): what compaction compresses at unless told otherwise.
    level: int | None = None
    # The segment's format version (its header's): a version 1 segment repaired by this
    # code keeps saying 1, so the builds that wrote it can still read it.
    format: int = FORMAT_VERSION

    def pack(self) -> bytes:
        keys = np.array(sorted(self.instruments), dtype="<u8")
        counts = np.array([self.instruments[int(k)] for k in keys], dtype="<u8")
        return msgpack.packb({
            **self.extra,
            "format": self.format,
            "blocks": self.blocks,
            "records": self.records,
            "first_wall_ns": self.first_wall_ns,
            "last_wall_ns": self.last_wall_ns,
            "first_mono_ns": self.first_mono_ns,
            "last_mono_ns": self.last_mono_ns,
            "payload_bytes": self.payload_bytes,
            "stored_bytes": self.stored_bytes,
            "kinds": {int(k): int(v) for k, v in self.kinds.items()},
            "instrument_keys": keys.tobytes(),
            "instrument_counts": counts.tobytes(),
            "index": np.ascontiguousarray(self.index, dtype=INDEX_DTYPE).tobytes(),
            "closed_ns": self.closed_ns,
            "recovered": self.recovered,
            # Only when set, so that a footer without it packs as it always did.
            **({"compacted": self.compacted} if self.compacted is not None else {}),
            **({"level": self.level} if self.level is not None else {}),
        }, use_bin_type=True)


_FOOTER_KEYS = frozenset((
    "format", "blocks", "records", "first_wall_ns", "last_wall_ns", "first_mono_ns",
    "last_mono_ns", "payload_bytes", "stored_bytes", "kinds", "instrument_keys",
    "instrument_counts", "index", "closed_ns", "recovered", "compacted", "level"))


def unpack_footer(body: bytes) -> Footer:
    """Raises ValueError if the map is not a footer; WalFormatError if it is too new."""
    m = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if not isinstance(m, dict):
        raise ValueError("footer is not a msgpack map")
    if m.get("format", 0) > FORMAT_VERSION:
        raise WalFormatError(f"footer format {m['format']} is newer than this reader")
    keys = np.frombuffer(m["instrument_keys"], dtype="<u8")
    counts = np.frombuffer(m["instrument_counts"], dtype="<u8")
    if len(keys) != len(counts):
        raise ValueError("footer instrument keys and counts differ in length")
    level, compacted = m.get("level"), m.get("compacted")
    if level is not None and not is_level(level):
        raise ValueError(f"footer level {level!r} is not a zstd level")
    if compacted is not None and not isinstance(compacted, dict):
        raise ValueError("footer compacted entry is not a map")
    index = np.frombuffer(m["index"], dtype=INDEX_DTYPE)
    if len(index) != m["blocks"]:
        raise ValueError("footer index length differs from its block count")
    extra = {k: v for k, v in m.items() if k not in _FOOTER_KEYS}
    return Footer(m["blocks"], m["records"], m["first_wall_ns"], m["last_wall_ns"],
                  m["first_mono_ns"], m["last_mono_ns"], m["payload_bytes"], m["stored_bytes"],
                  {int(k): int(v) for k, v in m["kinds"].items()},
                  dict(zip(keys.tolist(), counts.tolist())), index, m.get("closed_ns", 0),
                  m.get("recovered"), format=int(m.get("format", 1)),
                  extra=extra, compacted=compacted, level=level)


# ---------------------------------------------------------------------------- blocks

def compress_block(cols: Columns, codec: int, cctx: zstandard.ZstdCompressor) -> tuple[bytes, int]:
    """The stored (zstd) body of a block and its raw length."""
    raw = encode_body(cols, codec)
    return cctx.compress(raw), len(raw)


def block_frame(cols: Columns, codec: int, block: int, first_record: int, body: bytes,
                raw_len: int) -> bytes:
    """The 64-byte frame header that goes before ``body``."""
    n = len(cols.kind)
    lo = int(cols.wall_ns.min()) if n else 0
    hi = int(cols.wall_ns.max()) if n else 0
    flags = FLAG_INSTRUMENTS | FLAG_KEY_DICT if cols.has_instruments else 0
    return pack_frame(BLOCK_MAGIC, codec, flags, block, body, raw_len, n, lo, hi, first_record)


def decompress_body(frame: Frame, body, dctx: zstandard.ZstdDecompressor,
                    defer_unpack: bool = False) -> Columns:
    """Verify and decode one block body. Raises ValueError describing what is wrong (the
    caller names the segment, offset and block), WalFormatError for an unknown codec."""
    if len(body) != frame.stored_len:
        raise ValueError(f"body is {len(body)} bytes, frame says {frame.stored_len}")
    if xxh3(body) != frame.body_check:
        raise ValueError("body checksum mismatch")
    if frame.codec not in CODEC_NAMES:
        raise WalFormatError(f"block codec {frame.codec} is newer than this reader "
                             f"(knows {sorted(CODEC_NAMES)}); upgrade shrivenq")
    if frame.flags & ~KNOWN_BLOCK_FLAGS:
        raise WalFormatError(f"block flags {frame.flags:#04x} include bits this reader does "
                             f"not know ({KNOWN_BLOCK_FLAGS:#04x}); upgrade shrivenq")
    try:
        raw = dctx.decompress(body, max_output_size=frame.raw_len)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from None
    if len(raw) != frame.raw_len:
        raise ValueError(f"body decompresses to {len(raw)} bytes, frame says {frame.raw_len}")
    cols = decode_body(raw, frame.records, frame.codec, frame.flags, defer_unpack)
    if frame.records and (int(cols.wall_ns.min()) != frame.min_wall_ns
                          or int(cols.wall_ns.max()) != frame.max_wall_ns):
        raise ValueError("record times disagree with the frame's time range")
    return cols
