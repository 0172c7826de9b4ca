"""The tick-delta block transform (shrivenq._ext.tick_delta) and its plain-Python twin.

Round trips on any mix of payloads, byte-identical output of twin and compiled module,
hostile input to ``unpack``, and the compression it buys on the realistic Kite stream.
"""

from __future__ import annotations

import json
import platform
import struct
import sys

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shrivenq._ext import tick_delta as td
from shrivenq._ext.kite_frame import parse_many
from shrivenq.kite import KIND_FULL, KIND_LTP, KIND_QUOTE
from shrivenq.kite.wire import encode_frame
from shrivenq.sim.market import KiteMarket, default_universe
from shrivenq.wal import tick_delta_reference as ref

@pytest.fixture(autouse=True, params=["ssse3", "portable"])
def full_packet_store(request):
    """Every test runs with the SSSE3 byte swap of decoded full packets (x86-64 hosts, where
    it must be in use) and with the portable one."""
    in_use = td._use_simd(request.param == "ssse3")
    if (request.param == "ssse3" and platform.machine() in ("x86_64", "AMD64")
            and sys.maxsize > 2**32 and sys.platform != "win32"):   # where it is compiled in
        assert in_use, "SSSE3 store not in use on a 64-bit x86 host"
    yield request.param
    td._use_simd(True)


KNOWN = (8, 28, 32, 44, 184)
TOKENS = [256265, 260105, (12_000_000 << 8) | 2, (100_000 << 8) | 1, 738561, 5633]


def lens_of(parts) -> np.ndarray:
    return np.array([len(p) for p in parts], dtype=np.uint32)


def frame_of(*packets: bytes) -> bytes:
    return struct.pack(">H", len(packets)) + b"".join(
        struct.pack(">H", len(p)) + p for p in packets)


# ---------------------------------------------------------------------------------------
# realistic material, generated once per module
# ---------------------------------------------------------------------------------------

def _split_frames(rows, rng, most=8):
    frames, i = [], 0
    while i < len(rows):
        k = int(rng.integers(1, most + 1))
        frames.append(encode_frame(rows[i:i + k]))
        i += k
    return frames


@pytest.fixture(scope="module")
def stream():
    """~50k full-mode ticks of 200 instruments, frames of 1..8 packets."""
    market = KiteMarket(default_universe(200), seed=20251120)
    rows = market.ticks(50_000, kind=KIND_FULL)
    return _split_frames(rows, np.random.default_rng(5)), len(rows)


def _small_market_packets():
    """Single packets of every kind from a small market (so keys repeat)."""
    out = []
    for kind in (KIND_FULL, KIND_QUOTE, KIND_LTP):
        m = KiteMarket(default_universe(6), seed=kind)
        rows = m.ticks(60, kind=kind)
        for i in range(len(rows)):
            f = encode_frame(rows[i:i + 1])
            out.append(f[4:])   # strip count and length: one packet
    return out


REAL_PACKETS = _small_market_packets()
assert {len(p) for p in REAL_PACKETS} == set(KNOWN)


# ---------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------

@st.composite
def random_packet(draw):
    """A packet of a known length: a token that repeats, then random or near-real fields."""
    length = draw(st.sampled_from(KNOWN))
    token = draw(st.sampled_from(TOKENS))
    if draw(st.booleans()):
        body = draw(st.binary(min_size=length - 4, max_size=length - 4))
    else:
        # Small integer fields: what deltas are made for (and their wrap-arounds).
        words = draw(st.lists(st.sampled_from([0, 1, 2, 5, 0xFFFFFFFF, 0x80000000, 1000,
                                               1_763_610_300, 2_412_035]),
                              min_size=length // 4 - 1, max_size=length // 4 - 1))
        body = struct.pack(f">{len(words)}I", *words)
    return struct.pack(">I", token) + body


@st.composite
def mutated_real_packet(draw):
    """A realistic packet with a few 32-bit words nudged (like the next tick)."""
    p = bytearray(draw(st.sampled_from(REAL_PACKETS)))
    for _ in range(draw(st.integers(0, 4))):
        w = draw(st.integers(1, len(p) // 4 - 1))
        delta = draw(st.integers(-3, 3))
        v = (int.from_bytes(p[4 * w:4 * w + 4], "big") + delta) & 0xFFFFFFFF
        p[4 * w:4 * w + 4] = v.to_bytes(4, "big")
    return bytes(p)


packets = st.one_of(st.sampled_from(REAL_PACKETS), mutated_real_packet(), random_packet())
good_frames = st.lists(packets, min_size=0, max_size=6).map(lambda ps: frame_of(*ps))


@st.composite
def bad_frame(draw):
    """Almost-frames the parser would reject: a lying count, an unknown packet length,
    trailing bytes, a truncated packet."""
    ps = draw(st.lists(packets, min_size=1, max_size=4))
    f = frame_of(*ps)
    how = draw(st.sampled_from(["count+", "count-", "unknown", "trailing", "truncated"]))
    if how == "count+":
        return struct.pack(">H", len(ps) + draw(st.integers(1, 3))) + f[2:]
    if how == "count-":
        return struct.pack(">H", len(ps) - 1) + f[2:]
    if how == "unknown":
        n = draw(st.integers(0, 300).filter(lambda x: x not in KNOWN))
        return (struct.pack(">H", len(ps) + 1) + f[2:] + struct.pack(">H", n)
                + draw(st.binary(min_size=n, max_size=n)))
    if how == "trailing":
        return f + draw(st.binary(min_size=1, max_size=5))
    return f[:draw(st.integers(0, len(f) - 1))]


texts = st.one_of(
    st.just(b'{"type":"order","data":{"order_id":"250101000000001","status":"COMPLETE"}}'),
    st.builds(lambda m: json.dumps({"type": "message", "data": m}).encode(), st.text(max_size=40)),
    st.text(max_size=60).map(str.encode),
)
heartbeats = st.binary(min_size=1, max_size=1)
garbage = st.binary(max_size=300)

payload = st.one_of(good_frames, good_frames, bad_frame(), texts, heartbeats, garbage)
payload_lists = st.lists(payload, max_size=25)

FAST = settings(max_examples=500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_both(parts):
    data = b"".join(parts)
    lengths = lens_of(parts)
    packed = td.pack(data, lengths)
    assert ref.pack(data, lengths) == packed, "twin and compiled pack differ"
    assert td.unpack(packed, lengths) == data
    assert ref.unpack(packed, lengths) == data
    return packed


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------

@FAST
@given(payload_lists)
def test_round_trip_any_payloads(parts):
    check_both(parts)


@FAST
@given(st.lists(good_frames, max_size=30))
def test_round_trip_well_formed_frames(parts):
    packed = check_both(parts)
    assert packed[:4] == b"TD\x03\x00"
    tags = packed[36:36 + len(parts)]
    assert tags == b"\x01" * len(parts)   # every one taken as a frame, none verbatim


def test_edge_payloads():
    cases = [
        [],
        [b""],
        [b"", b"", b"\x00\x00"],               # a frame of no packets
        [b"\x01"],                             # heartbeat
        [b"\x00"], [b"\x00\x01"], [b"\x00\x01\x00"],
        [frame_of(b"\x00" * 8)],
        [frame_of(b"\xff" * 184, b"\xff" * 184, b"\x00" * 184)],
        [frame_of(*[struct.pack(">II", 5633, i) for i in range(300)])],
        [b'{"type":"error","data":"x"}', frame_of(REAL_PACKETS[0]), b"\x01"],
    ]
    for parts in cases:
        check_both(parts)


def test_frame_of_65535_packets():
    f = frame_of(*[struct.pack(">II", 256265 + (i % 7), i * 3) for i in range(65535)])
    lengths = lens_of([f])
    packed = td.pack(f, lengths)
    assert packed[36] == 1
    assert td.unpack(packed, lengths) == f


def test_accepts_bytes_likes():
    parts = [frame_of(*REAL_PACKETS[:3]), b"text", frame_of(*REAL_PACKETS[3:9])]
    data = b"".join(parts)
    lengths = lens_of(parts)
    packed = td.pack(data, lengths)
    for form in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        assert td.pack(form, lengths) == packed
        assert ref.pack(form, lengths) == packed
    for form in (bytearray(packed), memoryview(packed), np.frombuffer(packed, np.uint8)):
        assert td.unpack(form, lengths) == data


@pytest.mark.parametrize("impl", [td, ref], ids=["compiled", "twin"])
def test_pack_rejects_lengths_that_do_not_add_up(impl):
    data = frame_of(*REAL_PACKETS[:2])
    for bad in ([len(data) - 1], [len(data) + 1], [], [len(data), 1]):
        with pytest.raises(ValueError):
            impl.pack(data, np.array(bad, dtype=np.uint32))
    with pytest.raises(ValueError):
        impl.pack(data, np.array([len(data)], dtype=np.int64))


def test_quantum_is_the_odd_lot_factor():
    """Quantities in lots of 150 (2 x 75): the key's quantum is 75 and the stored first
    packet holds lot counts; a later packet off the lot grid still round-trips."""
    words = [12345 << 8 | 2, 1000, 150, 1000, 150 * 40, 150 * 7, 150 * 9, 0, 0, 0, 0,
             0, 0, 0, 0, 0] + [150 * (k + 1) if i % 3 == 0 else 1000 if i % 3 == 1 else 3 << 16
                               for k in range(10) for i in range(3)]
    p1 = struct.pack(">46I", *words)
    words[5] += 1                       # not a multiple of anything
    p2 = struct.pack(">46I", *words)
    parts = [frame_of(p1), frame_of(p2)]
    packed = check_both(parts)
    at = 36 + 2 + 2 + 1 + 4           # header, tags, ids, key kind, key token (one key)
    assert packed[at:at + 4] == (75).to_bytes(4, "big")
    # A cash equity (segment 1) trades in units: round quantities prove nothing, quantum 1.
    words[0] = 12345 << 8 | 1
    words[5] -= 1
    packed = check_both([frame_of(struct.pack(">46I", *words))])
    assert packed[36 + 1 + 1 + 1 + 4:][:4] == (1).to_bytes(4, "big")


def test_threads_share_nothing(stream):
    """pack/unpack release the GIL and keep one scratch buffer: concurrent calls must not
    see each other's state."""
    import threading
    frames, _ = stream
    blocks = [(b"".join(b), lens_of(b)) for b in blocks_of(frames[:4000], 64 * 1024)]
    expected = [td.pack(d, n) for d, n in blocks]
    errors = []

    def work(offset):
        try:
            for r in range(30):
                i = (offset + r) % len(blocks)
                d, n = blocks[i]
                p = td.pack(d, n)
                if p != expected[i] or td.unpack(p, n) != d:
                    errors.append(i)
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _golden_parts():
    """A fixed block (no simulator: its bytes must never change) of every kind of payload."""
    opt, idx_tok, stk = (12_000_123 << 8) | 2, 256265, (100_002 << 8) | 1

    def full(ltp, vol, lq, ts, bidq0):
        words = [opt, ltp, lq, ltp - 5, vol, 75 * 1200, 75 * 900, 12000, 12500, 11800, 12100,
                 ts, 75 * 40000, 75 * 41000, 75 * 39000, ts]
        for side in (0, 1):
            for k in range(5):
                q = bidq0 * 75 if (side, k) == (0, 0) else 75 * (10 + k)
                p = ltp - 5 * (k + 1) if side == 0 else ltp + 5 * (k + 1)
                words += [q, p, (3 + k) << 16]
        return struct.pack(">46I", *words)

    index = struct.pack(">8I", idx_tok, 2412035, 2413000, 2409000, 2410000, 2400000, 12035,
                        1763610301)
    quote1 = struct.pack(">11I", stk, 150000, 10, 149990, 5000, 700, 800, 149000, 151000,
                         148000, 149500)
    quote2 = struct.pack(">11I", stk, 150005, 20, 149995, 5020, 690, 810, 149000, 151000,
                         148000, 149500)
    ltp = struct.pack(">2I", stk, 150010)
    return [frame_of(full(12345, 75 * 100, 75, 1763610300, 7), index), b"\x01",
            frame_of(quote1), b'{"type":"order","data":{}}',
            frame_of(full(12350, 75 * 102, 150, 1763610301, 8), quote2, ltp), b"\x00\x00",
            b"\x00\x05junk"]


# Written by the first v3 encoder, which also gave the cash-equity key a quantum (5): still
# a valid version-3 block, so it must keep decoding.
GOLDEN_V3_EARLY = bytes.fromhex(
    "54440300070000002100000004000000010000000000000001000000020000000200000001000100010100"
    "017b2274797065223a226f72646572222c2264617461223a7b7d7d00056a756e6b00010200020304020300"
    "b70001011b0386867be9a2a2020901010000000000000000000000004b010501000249fa0024ce03000007"
    "8a000017b500000fe500005e0500002f03d23d1d7a000249f00000000200000013000003e80000008c0000"
    "00a0000007cf000007d000000f9f000003e700003039000000010000000900000064000004b00000038400"
    "0002b10000013600000441000001e90000000000009c40000007d0000007cfd23d1d780000000700000009"
    "000000030000000b00000009000000040000000c00000009000000050000000d0000000900000006000000"
    "0e00000009000000070000000a0000000a000000030000000b0000000a000000040000000c0000000a0000"
    "00050000000d0000000a000000060000000e0000000a000000073d000d4001000000000000000a0000000a"
    "0000000800000003000000040000000a0000000a000000040000000200000002")


GOLDEN_V3 = bytes.fromhex(
    "5444030007000000210000000400000001000000000000000100000002000000020000000100010001010001"
    "7b2274797065223a226f72646572222c2264617461223a7b7d7d00056a756e6b00010200020304020300b700"
    "01011b0386867be9a2a2020901010000000000000000000000004b010101000249fa0024ce030000078a0000"
    "17b500000fe500005e0500002f03d23d1d7a000249f00000000a0000001300001388000002bc000003200000"
    "07cf000007d000000f9f000003e700003039000000010000000900000064000004b000000384000002b10000"
    "013600000441000001e90000000000009c40000007d0000007cfd23d1d780000000700000009000000030000"
    "000b00000009000000040000000c00000009000000050000000d00000009000000060000000e000000090000"
    "00070000000a0000000a000000030000000b0000000a000000040000000c0000000a000000050000000d0000"
    "000a000000060000000e0000000a000000073d000d4001000000000000000a0000000a000000280000001300"
    "0000140000000a0000000a000000040000000200000002")


@pytest.mark.parametrize("impl", [td, ref], ids=["compiled", "twin"])
def test_format_v3_is_frozen(impl):
    """Blocks already in write-ahead logs must stay readable (docs/WAL_FORMAT.md). If the
    unpack assertion fails, the format changed: bump FORMAT_VERSION and keep decoding version
    3, or give the new transform its own WAL codec id. The pack assertion pins the encoder's
    choices too (e.g. the quantum heuristic); those may change within version 3 as long as
    the old bytes still decode, and then GOLDEN_V3 is regenerated on purpose."""
    parts = _golden_parts()
    data, lengths = b"".join(parts), lens_of(parts)
    assert td.FORMAT_VERSION == 3 and ref.VERSION == 3
    assert impl.unpack(GOLDEN_V3, lengths) == data, "version 3 blocks no longer decode"
    assert impl.unpack(GOLDEN_V3_EARLY, lengths) == data, "version 3 blocks no longer decode"
    assert impl.pack(data, lengths) == GOLDEN_V3, "the encoder's output changed"


def test_state_resets_per_block():
    """The same payloads pack the same whatever was packed before."""
    parts = [frame_of(*REAL_PACKETS[i:i + 4]) for i in range(0, 40, 4)]
    lengths = lens_of(parts)
    first = td.pack(b"".join(parts), lengths)
    td.pack(b"".join(reversed(parts)), lengths[::-1].copy())
    assert td.pack(b"".join(parts), lengths) == first


# ---------------------------------------------------------------------------------------
# hostile input to unpack
# ---------------------------------------------------------------------------------------

def _try(impl, packed, lengths):
    try:
        out = impl.unpack(packed, lengths)
    except ValueError as exc:
        assert str(exc)
        return None
    assert isinstance(out, bytes)
    return out


@settings(max_examples=120, deadline=20_000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload_lists, st.randoms(use_true_random=False))
def test_unpack_hostile(parts, rnd):
    data = b"".join(parts)
    lengths = lens_of(parts)
    packed = td.pack(data, lengths)
    # Every truncation fails (the size is part of the format); the twin on a sample.
    for i in range(len(packed)):
        assert _try(td, packed[:i], lengths) is None
    for i in rnd.sample(range(len(packed)), min(len(packed), 40)):
        assert _try(ref, packed[:i], lengths) is None
    # Single-byte changes: an error or some bytes, never a crash or a hang.
    for _ in range(200):
        b = bytearray(packed)
        i = rnd.randrange(len(b))
        b[i] ^= rnd.randrange(1, 256)
        out = _try(td, bytes(b), lengths)
        if rnd.random() < 0.2:
            assert _try(ref, bytes(b), lengths) == out
    # Appended bytes.
    assert _try(td, packed + b"\0", lengths) is None
    # Lengths that do not match: other sums, other splits.
    if len(parts):
        bad = lengths.copy()
        bad[rnd.randrange(len(bad))] += rnd.randrange(1, 5)
        assert _try(td, packed, bad) is None
        assert _try(ref, packed, bad) is None
        assert _try(td, packed, lengths[:-1].copy()) is None
    if len(parts) >= 2 and data:
        moved = lengths.copy()
        i = rnd.randrange(len(moved) - 1)
        if moved[i] > 0:
            moved[i] -= 1
            moved[i + 1] += 1
            assert _try(td, packed, moved) == _try(ref, packed, moved)
        shuffled = lengths.copy()
        rnd.shuffle(shuffled)
        assert _try(td, packed, shuffled) == _try(ref, packed, shuffled)


@settings(max_examples=400, deadline=20_000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.binary(max_size=400), st.lists(st.integers(0, 200), max_size=8))
def test_unpack_garbage(blob, lens):
    lengths = np.array(lens, dtype=np.uint32)
    out = _try(td, blob, lengths)
    assert _try(ref, blob, lengths) == out


@settings(max_examples=150, deadline=20_000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_unpack_header_lies(data):
    """A well-formed block whose header counts are changed: errors, no big allocations."""
    parts = [frame_of(*REAL_PACKETS[:5]), b"\x01", frame_of(*REAL_PACKETS[5:12])]
    lengths = lens_of(parts)
    packed = bytearray(td.pack(b"".join(parts), lengths))
    field = data.draw(st.integers(0, 7))
    value = data.draw(st.sampled_from([0, 1, 2, 255, 256, 65535, 0x7FFFFFFF, 0xFFFFFFFF]))
    struct.pack_into("<I", packed, 4 + 4 * field, value)
    out = _try(td, bytes(packed), lengths)
    assert _try(ref, bytes(packed), lengths) == out


def test_unpack_reasons():
    parts = [frame_of(*REAL_PACKETS[:4])]
    lengths = lens_of(parts)
    packed = td.pack(b"".join(parts), lengths)
    cases = {
        b"XX" + packed[2:]: "magic",
        packed[:2] + b"\x09" + packed[3:]: "version",
        packed[:3] + b"\x01" + packed[4:]: "flags",
        packed[:10]: "truncated",
        packed + b"\0": "trailing",
    }
    # An even key quantum (the least significant plane of the first key's quantum).
    n_packets = sum(struct.unpack_from("<5I", packed, 16))
    n_keys = struct.unpack_from("<I", packed, 12)[0]
    at = 36 + 1 + n_packets + n_keys + 4 * n_keys + 3 * n_keys
    even = bytearray(packed)
    even[at] ^= 1
    cases[bytes(even)] = "quantum"
    for impl in (td, ref):
        for blob, word in cases.items():
            with pytest.raises(ValueError, match=word):
                impl.unpack(blob, lengths)
        with pytest.raises(ValueError, match="lengths"):
            impl.unpack(packed, lengths + 1)


@pytest.mark.parametrize("at", [3, 20, 35])
def test_a_set_padding_bit_in_a_mask_is_refused(at):
    """Mask bytes are counted 16 at a time, then one by one: a padding bit anywhere fails."""
    full = next(p for p in REAL_PACKETS if len(p) == 184)
    parts = [frame_of(*[full] * 41)]          # one key: its first packet, then 40 masks
    lengths = lens_of(parts)
    packed = bytearray(td.pack(b"".join(parts), lengths))
    masks = 36 + 1 + 41 + 1 + 4 + 4 + 4 * 45  # header, tag, ids, kind, token, quantum, firsts
    packed[masks + 40 + at] |= 0x80           # mask byte 1, bit 7 (slot 15): padding
    for unpack in (td.unpack, ref.unpack):
        with pytest.raises(ValueError, match="padding bit"):
            unpack(bytes(packed), lengths)
    with pytest.raises(ValueError, match="padding bit"):
        td.unpack_ticks(bytes(packed), lengths, np.ones(1, np.uint8), np.zeros(1, np.int64),
                        np.zeros(1, np.uint32))


# ---------------------------------------------------------------------------------------
# the compression it buys
# ---------------------------------------------------------------------------------------

def blocks_of(frames, size=256 * 1024):
    out, cur, n = [], [], 0
    for f in frames:
        cur.append(f)
        n += len(f)
        if n >= size:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def test_compression_on_realistic_stream(stream):
    frames, ticks = stream
    z = zstandard.ZstdCompressor(level=1)
    packed_total = plain_total = 0
    for block in blocks_of(frames):
        data = b"".join(block)
        lengths = lens_of(block)
        packed = td.pack(data, lengths)
        assert td.unpack(packed, lengths) == data
        packed_total += len(z.compress(packed))
        plain_total += len(z.compress(data))
    per_tick, plain_per_tick = packed_total / ticks, plain_total / ticks
    print(f"\nzstd-1 on {ticks} full ticks in ~256 KB blocks: tick_delta {per_tick:.2f} B/tick,"
          f" plain {plain_per_tick:.2f} B/tick, raw {sum(map(len, frames)) / ticks:.1f}"
          f" B/tick, ratio {plain_per_tick / per_tick:.2f}x")
    assert per_tick <= 25.0
    assert per_tick <= plain_per_tick / 2


def test_twin_matches_on_a_realistic_block(stream):
    frames, _ = stream
    block = blocks_of(frames)[1]
    data = b"".join(block)
    lengths = lens_of(block)
    packed = td.pack(data, lengths)
    assert ref.pack(data, lengths) == packed
    assert ref.unpack(packed, lengths) == data


def test_other_modes_round_trip_and_shrink():
    z = zstandard.ZstdCompressor(level=1)
    for kind in (KIND_QUOTE, KIND_LTP):
        rows = KiteMarket(default_universe(50), seed=3).ticks(4000, kind=kind)
        frames = _split_frames(rows, np.random.default_rng(1))
        data = b"".join(frames)
        lengths = lens_of(frames)
        packed = td.pack(data, lengths)
        assert ref.pack(data, lengths) == packed
        assert td.unpack(packed, lengths) == data
        assert len(z.compress(packed)) < len(z.compress(data))


# ---------------------------------------------------------------------------------------
# unpack_ticks: rows straight from a block, held to parse_many of unpack
# ---------------------------------------------------------------------------------------

def _starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(lengths, dtype=np.uint64)[:-1])).astype(np.uint64)


def _ticks_against_parse(packed, lengths, select) -> str:
    """unpack_ticks against parse_many over unpack's payloads, for the same block: the same
    rows, payload indices, times and connections, or the same error, or None where the
    block does not fit the direct path. Returns which of the three happened."""
    n = len(lengths)
    wall = np.arange(n, dtype=np.int64) * 1_000 - 7
    conn = np.arange(n, dtype=np.uint32) * 3 + 1
    try:
        direct = td.unpack_ticks(packed, lengths, select, wall, conn)
    except ValueError as exc:
        direct = exc
    try:
        data = td.unpack(packed, lengths)
    except ValueError as exc:
        # Header faults raise before the path is chosen; faults in the packets raise the
        # same error, unless the block was handed back first (None).
        assert direct is None or str(direct) == str(exc), (direct, exc)
        return "error" if direct is not None else "none"
    assert not isinstance(direct, ValueError), direct
    tags = np.frombuffer(packed, np.uint8, n, 36)
    fits = not ((tags == 0) & (select != 0) & (lengths >= 2)).any() and not (
        (tags == 1) & (select == 0)).any()
    assert (direct is not None) == fits
    if direct is None:
        return "none"
    idx = np.flatnonzero(select)
    rows, owner, bad = parse_many(data, _starts(lengths)[idx], lengths[idx])
    assert bad == []
    got_rows, rec, got_wall, got_conn = direct
    assert got_rows.dtype == rows.dtype
    assert got_rows.tobytes() == rows.tobytes()
    assert rec.tolist() == idx[owner].tolist()
    assert got_wall.tolist() == wall[rec].tolist()
    assert got_conn.tolist() == conn[rec].tolist()
    return "rows"


@FAST
@given(payload_lists, st.data())
def test_unpack_ticks_gives_the_parsers_rows(parts, data):
    lengths = lens_of(parts)
    packed = td.pack(b"".join(parts), lengths)
    tags = np.frombuffer(packed, np.uint8, len(parts), 36)
    # the binary frames as a WAL block marks them (what replay selects), or any selection
    exact = ((tags == 1) | (lengths < 2)).astype(np.uint8)
    assert _ticks_against_parse(packed, lengths, exact) == "rows"
    chosen = np.array(data.draw(st.lists(st.booleans(), min_size=len(parts),
                                         max_size=len(parts))), dtype=np.uint8)
    _ticks_against_parse(packed, lengths, chosen)


def test_unpack_ticks_on_a_realistic_block(stream):
    frames, _ = stream
    block = blocks_of(frames)[1]
    lengths = lens_of(block)
    packed = td.pack(b"".join(block), lengths)
    assert _ticks_against_parse(packed, lengths, np.ones(len(block), np.uint8)) == "rows"
    for kind in (KIND_QUOTE, KIND_LTP):
        rows = KiteMarket(default_universe(50), seed=3).ticks(4000, kind=kind)
        frames = _split_frames(rows, np.random.default_rng(1))
        lengths = lens_of(frames)
        packed = td.pack(b"".join(frames), lengths)
        assert _ticks_against_parse(packed, lengths, np.ones(len(frames), np.uint8)) == "rows"


@settings(max_examples=80, deadline=20_000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(good_frames, heartbeats, texts), max_size=20),
       st.randoms(use_true_random=False))
def test_unpack_ticks_hostile(parts, rnd):
    """Damaged blocks: the error unpack gives (or the block handed back), never other rows."""
    lengths = lens_of(parts)
    packed = td.pack(b"".join(parts), lengths)
    tags = np.frombuffer(packed, np.uint8, len(parts), 36)
    select = ((tags == 1) | (lengths < 2)).astype(np.uint8)
    for i in range(0, len(packed), max(1, len(packed) // 60)):
        assert _ticks_against_parse(packed[:i], lengths, select) in ("error", "none")
    for _ in range(150):
        b = bytearray(packed)
        b[rnd.randrange(len(b))] ^= rnd.randrange(1, 256)
        _ticks_against_parse(bytes(b), lengths, select)


def test_unpack_ticks_checks_its_arguments():
    parts = [frame_of(*REAL_PACKETS[:3]), b"\x01"]
    lengths = lens_of(parts)
    packed = td.pack(b"".join(parts), lengths)
    ok = (np.ones(2, np.uint8), np.zeros(2, np.int64), np.zeros(2, np.uint32))
    assert len(td.unpack_ticks(packed, lengths, *ok)[0]) == 3
    with pytest.raises(ValueError, match="one entry per payload"):
        td.unpack_ticks(packed, lengths, ok[0][:1], ok[1], ok[2])
    with pytest.raises(ValueError, match="uint8, int64 and uint32"):
        td.unpack_ticks(packed, lengths, ok[0], ok[1].astype(np.int32), ok[2])
    with pytest.raises(ValueError, match="payloads"):
        td.unpack_ticks(packed, lengths[:1], ok[0][:1], ok[1][:1], ok[2][:1])

    def unaligned(a):           # the same values at an odd address, as a WAL body holds them
        raw = np.frombuffer(b"\0" + a.tobytes(), np.uint8)[1:].view(a.dtype)
        assert not raw.flags.aligned
        return raw

    wall, conn = np.array([5, 9], np.int64), np.array([3, 4], np.uint32)
    want = td.unpack_ticks(packed, lengths, ok[0], wall, conn)
    got = td.unpack_ticks(packed, unaligned(lengths), ok[0], unaligned(wall), unaligned(conn))
    assert all(np.array_equal(x, y) for x, y in zip(got, want))
    assert td.unpack(packed, unaligned(lengths)) == td.unpack(packed, lengths)
