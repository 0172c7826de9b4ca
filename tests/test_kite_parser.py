"""The Kite binary parser: hand-written byte literals, kiteconnect's own parser as the oracle,
the plain-Python twin, and hostile input."""

from __future__ import annotations

import struct
from datetime import datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kiteconnect import KiteTicker

from shrivenq.errors import KiteFrameError, ProtocolError, ShrivenqError
from shrivenq.kite import (
    KIND_FULL, KIND_INDEX_FULL, KIND_INDEX_QUOTE, KIND_LTP, KIND_QUOTE, TICK_DTYPE, MessageKind,
    classify, frame_keys, frame_row_bound, parse_frame, parse_frame_into, parse_frame_lenient, parse_text,
    parse_ticks,
)
from shrivenq._ext.kite_frame import parse_many
from shrivenq.kite.reference import reference_parse_frame

SDK = KiteTicker.__new__(KiteTicker)  # _parse_binary uses no connection state


def frame_of(*packets: bytes) -> bytes:
    return struct.pack(">H", len(packets)) + b"".join(struct.pack(">H", len(p)) + p
                                                      for p in packets)


# --- byte literals, written from the protocol description --------------------------------

# NSE token 408065 (0x00063A01, segment 1): last price 1523.45, as 152345.
LTP = bytes.fromhex("00063A01" "00025319")

# NIFTY 50 (256265 = 0x0003E909, segment 9 indices), index quote:
# ltp 24120.35, high 24200.00, low 24050.10, open 24100.05, close 24000.00, change 12035.
INDEX_QUOTE = bytes.fromhex(
    "0003E909" "0024CE03" "0024ED20" "0024B292" "0024C615" "00249F00" "00002F03")
INDEX_FULL = INDEX_QUOTE + bytes.fromhex("6920B1A0")  # exchange time 1763750304

# NFO token 13000002 << 8 | 2: a quote packet.
QUOTE = bytes.fromhex(
    "C65D4002"   # token 3327016962
    "FFFFFFFB"   # last price -5 (-0.05): negative, as spreads can be
    "0000004B"   # last quantity 75
    "00000064"   # average price 100 (1.00)
    "0098967F"   # volume 9999999
    "00000190"   # total buy 400
    "000001F4"   # total sell 500
    "0000000A"   # open 10
    "00000014"   # high 20
    "FFFFFFF6"   # low -10
    "00000005"   # close 5
)
FULL_EXT = bytes.fromhex(
    "6920B19F"   # last trade time 1763750303
    "000F4240"   # oi 1,000,000
    "00100590"   # oi day high 1,050,000
    "000E7EF0"   # oi day low 950,000
    "6920B1A0"   # exchange time 1763750304
)
DEPTH = b"".join(
    struct.pack(">IiH2x", 100 * (i + 1), 1000 - i, i + 1) for i in range(5)  # bids
) + b"".join(
    struct.pack(">IiH2x", 200 * (i + 1), 1001 + i, 10 + i) for i in range(5)  # asks
)
FULL = QUOTE + FULL_EXT + DEPTH


def test_packet_literals_have_the_documented_lengths():
    assert [len(p) for p in (LTP, INDEX_QUOTE, INDEX_FULL, QUOTE, FULL)] == [8, 28, 32, 44, 184]


def test_ltp_packet():
    (row,) = parse_frame(frame_of(LTP))
    assert (row["token"], row["segment"], row["last_price"], row["divisor"]) == (408065, 1,
                                                                                   152345, 100)
    assert (row["kind"], row["mode"], row["tradable"], row["packet_length"]) == (KIND_LTP, 0, 1,
                                                                                  8)
    assert row["close"] == 0 and row["volume"] == 0 and not row["bid_price"].any()


def test_index_quote_packet_reads_high_low_open_close_in_wire_order():
    (row,) = parse_frame(frame_of(INDEX_QUOTE))
    assert row["token"] == 256265 and row["segment"] == 9 and row["tradable"] == 0
    assert row["kind"] == KIND_INDEX_QUOTE and row["mode"] == 1
    assert (row["last_price"], row["high"], row["low"], row["open"], row["close"]) == (
        2412035, 2420000, 2405010, 2410005, 2400000)
    assert row["change"] == 12035 and row["exchange_timestamp"] == 0


def test_index_full_packet_has_exchange_time():
    (row,) = parse_frame(frame_of(INDEX_FULL))
    assert row["kind"] == KIND_INDEX_FULL and row["mode"] == 2
    assert row["exchange_timestamp"] == 1763750304 and row["open"] == 2410005


def test_quote_packet_keeps_negative_prices_signed():
    (row,) = parse_frame(frame_of(QUOTE))
    assert row["kind"] == KIND_QUOTE and row["segment"] == 2 and row["divisor"] == 100
    assert row["last_price"] == -5 and row["low"] == -10
    assert (row["last_quantity"], row["average_price"], row["volume"]) == (75, 100, 9999999)
    assert (row["total_buy_quantity"], row["total_sell_quantity"]) == (400, 500)
    assert (row["open"], row["high"], row["close"]) == (10, 20, 5)
    assert row["oi"] == 0 and row["last_trade_time"] == 0


def test_full_packet_with_depth():
    (row,) = parse_frame(frame_of(FULL))
    assert row["kind"] == KIND_FULL and row["fields"] == 63
    assert (row["last_trade_time"], row["oi"], row["oi_day_high"], row["oi_day_low"],
            row["exchange_timestamp"]) == (1763750303, 1_000_000, 1_050_000, 950_000,
                                           1763750304)
    assert row["bid_quantity"].tolist() == [100, 200, 300, 400, 500]
    assert row["bid_price"].tolist() == [1000, 999, 998, 997, 996]
    assert row["bid_orders"].tolist() == [1, 2, 3, 4, 5]
    assert row["ask_quantity"].tolist() == [200, 400, 600, 800, 1000]
    assert row["ask_price"].tolist() == [1001, 1002, 1003, 1004, 1005]
    assert row["ask_orders"].tolist() == [10, 11, 12, 13, 14]


@pytest.mark.parametrize("segment,divisor", [(1, 100), (2, 100), (3, 10_000_000), (4, 100),
                                             (5, 100), (6, 10_000), (7, 100), (8, 100),
                                             (9, 100), (12, 10_000), (0, 100), (200, 100)])
def test_divisor_by_segment(segment, divisor):
    packet = struct.pack(">Ii", (777 << 8) | segment, 123)
    (row,) = parse_frame(frame_of(packet))
    assert row["divisor"] == divisor and row["segment"] == segment
    assert parse_ticks(frame_of(packet))[0]["last_price"] == 123 / divisor


def test_mixed_frame_keeps_packet_order():
    rows = parse_frame(frame_of(FULL, LTP, INDEX_QUOTE, QUOTE, INDEX_FULL))
    assert rows["kind"].tolist() == [KIND_FULL, KIND_LTP, KIND_INDEX_QUOTE, KIND_QUOTE,
                                     KIND_INDEX_FULL]


def test_parse_ticks_on_literal_full_packet_matches_the_sdk_including_its_unsigned_prices():
    frame = frame_of(FULL)
    (tick,) = parse_ticks(frame)
    assert tick == SDK._parse_binary(frame)[0]
    assert tick["last_price"] == 4294967291 / 100  # the SDK's unsigned reading of -5
    assert tick["last_trade_time"] == datetime.fromtimestamp(1763750303)
    assert tick["depth"]["sell"][4] == {"quantity": 1000, "price": 10.05, "orders": 14}


# --- heartbeats and text ---------------------------------------------------------------

def test_heartbeat_is_not_ticks():
    assert classify(b"\x00") is MessageKind.HEARTBEAT
    assert parse_frame(b"\x00").shape == (0,)
    assert parse_ticks(b"\x00") == []


def test_text_messages_are_recognised_and_parsed():
    assert classify('{"type": "order", "data": {}}') is MessageKind.TEXT
    assert classify(frame_of(LTP)) is MessageKind.TICKS
    msg = parse_text('{"type": "error", "data": "Invalid access token"}')
    assert (msg.type, msg.data) == ("error", "Invalid access token")


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"data": 1}', '{"type": "bogus"}',
                                  b"\xff\xfe"])
def test_bad_text_messages_raise_protocol_error(text):
    with pytest.raises(ProtocolError):
        parse_text(text)


# --- malformed frames ------------------------------------------------------------------

@pytest.mark.parametrize("frame,offset,words", [
    (b"", 0, "empty"),
    (b"\x00\x02" + frame_of(LTP)[2:], 12, "missing"),            # count says 2, one present
    (b"\x00\x01\x00", 2, "missing"),                              # half a packet header
    (b"\x00\x01\x00\xb8" + FULL[:100], 2, "declares 184"),        # length past the end
    (frame_of(LTP + b"\x00\x00"), 2, "unknown length 10"),        # no such packet kind
    (frame_of(LTP) + b"\x99", 12, "trailing"),                    # bytes after the packets
])
def test_malformed_frames_raise_with_offset_and_reason(frame, offset, words):
    with pytest.raises(KiteFrameError) as info:
        parse_frame(frame)
    assert info.value.offset == offset and words in info.value.reason
    assert isinstance(info.value, ShrivenqError) and f"byte {offset}" in str(info.value)
    with pytest.raises(KiteFrameError):
        parse_ticks(frame)


def test_lenient_parse_keeps_good_packets_and_counts_unknown_lengths():
    weird = b"\x01" * 10
    frame = frame_of(LTP, weird, QUOTE, weird)
    rows, issues = parse_frame_lenient(frame)
    assert rows["kind"].tolist() == [KIND_LTP, KIND_QUOTE]
    assert [e.offset for e in issues] == [12, 70]
    assert all("unknown length 10" in e.reason for e in issues)


def test_lenient_parse_keeps_packets_before_a_truncation():
    frame = frame_of(FULL, QUOTE, FULL)[:-50]
    rows, issues = parse_frame_lenient(frame)
    assert rows["kind"].tolist() == [KIND_FULL, KIND_QUOTE]
    assert len(issues) == 1 and issues[0].offset == 2 + 186 + 46


def test_a_lying_packet_count_cannot_make_a_huge_allocation():
    frame = b"\xff\xff" + frame_of(LTP)[2:]
    assert frame_row_bound(frame) == 1
    rows, issues = parse_frame_lenient(frame)
    assert len(rows) == 1 and "missing" in issues[0].reason


def test_parse_frame_into_fills_a_caller_array_at_an_offset():
    out = np.zeros(4, dtype=TICK_DTYPE)
    assert parse_frame_into(frame_of(LTP, QUOTE), out, 1) == 2
    assert out["kind"].tolist() == [0, KIND_LTP, KIND_QUOTE, 0]
    with pytest.raises(ValueError, match="too small"):
        parse_frame_into(frame_of(LTP, LTP, LTP, LTP), out, 2)
    with pytest.raises(TypeError):
        parse_frame_into(frame_of(LTP), np.zeros(4, dtype=np.uint8))


# --- kiteconnect as the oracle, and the plain-Python twin -------------------------------

SEGMENTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12]
LENGTHS = [8, 28, 32, 44, 184]


@st.composite
def packets(draw):
    length = draw(st.sampled_from(LENGTHS))
    token = (draw(st.integers(0, 0xFFFFFF)) << 8) | draw(st.sampled_from(SEGMENTS))
    # Timestamps must stay inside what datetime.fromtimestamp takes, for both parsers alike;
    # every other byte is free, including prices with the top bit set.
    body = bytearray(draw(st.binary(min_size=length - 4, max_size=length - 4)))
    for off in {32: (24,), 184: (40, 56)}.get(length, ()):
        body[off:off + 4] = struct.pack(">I", draw(st.integers(0, 2**31 - 1)))
    return struct.pack(">I", token) + bytes(body)


frames = st.lists(packets(), min_size=0, max_size=30).map(lambda ps: frame_of(*ps))


@settings(max_examples=300, deadline=None)
@given(frames)
def test_parse_ticks_equals_kiteconnect(frame):
    assert parse_ticks(frame) == SDK._parse_binary(frame)


def _u32(value) -> int:
    return int(value) & 0xFFFFFFFF


@settings(max_examples=300, deadline=None)
@given(frames)
def test_parse_frame_agrees_numerically_with_kiteconnect(frame):
    rows = parse_frame(frame)
    ticks = SDK._parse_binary(frame)
    assert len(rows) == len(ticks)
    for row, tick in zip(rows, ticks):
        div = float(row["divisor"])
        assert int(row["token"]) == tick["instrument_token"]
        assert bool(row["tradable"]) == tick["tradable"]
        assert ("ltp", "quote", "full")[row["mode"]] == tick["mode"]
        # The SDK reads prices unsigned; ours are signed, identical modulo 2**32.
        assert _u32(row["last_price"]) / div == tick["last_price"]
        if "ohlc" in tick:
            for name in ("open", "high", "low", "close"):
                assert _u32(row[name]) / div == tick["ohlc"][name]
        if "volume_traded" in tick:
            assert int(row["volume"]) == tick["volume_traded"]
            assert int(row["last_quantity"]) == tick["last_traded_quantity"]
            assert _u32(row["average_price"]) / div == tick["average_traded_price"]
            assert int(row["total_buy_quantity"]) == tick["total_buy_quantity"]
            assert int(row["total_sell_quantity"]) == tick["total_sell_quantity"]
        if "exchange_timestamp" in tick:
            assert datetime.fromtimestamp(int(row["exchange_timestamp"])) == \
                tick["exchange_timestamp"]
        if "depth" in tick:
            assert int(row["oi"]) == tick["oi"] and int(row["oi_day_low"]) == tick["oi_day_low"]
            for side, prefix in (("buy", "bid"), ("sell", "ask")):
                for level, entry in enumerate(tick["depth"][side]):
                    assert int(row[f"{prefix}_quantity"][level]) == entry["quantity"]
                    assert _u32(row[f"{prefix}_price"][level]) / div == entry["price"]
                    assert int(row[f"{prefix}_orders"][level]) == entry["orders"]


@settings(max_examples=300, deadline=None)
@given(frames)
def test_parse_frame_equals_the_reference_twin_byte_for_byte(frame):
    assert parse_frame(frame).tobytes() == reference_parse_frame(frame).tobytes()


# --- hostile bytes ------------------------------------------------------------------------

def _check_hostile(frame: bytes) -> None:
    try:
        rows = parse_frame(frame)
    except KiteFrameError as err:
        assert 0 <= err.offset <= len(frame)
        with pytest.raises(KiteFrameError) as twin:
            reference_parse_frame(frame)
        assert twin.value.offset == err.offset
    else:
        assert rows.tobytes() == reference_parse_frame(frame).tobytes()
    lenient, issues = parse_frame_lenient(frame)
    assert all(0 <= e.offset <= len(frame) for e in issues)
    assert len(lenient) <= frame_row_bound(frame)
    # The WAL's instrument keys come from a header-only walk with the same skip rules.
    keys = frame_keys(frame)
    assert np.frombuffer(keys, "<u8").tolist() == lenient["token"].tolist()
    # bytes are read in place, other buffers through a view: the same keys either way.
    assert frame_keys(bytearray(frame)) == frame_keys(memoryview(frame)) == keys


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_and_errors_name_an_offset_inside_the_frame(frame):
    _check_hostile(frame)


@settings(max_examples=1500, deadline=None)
@given(frames.filter(len), st.data())
def test_mutated_frames_never_crash(frame, data):
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if action == "flip" and mutated:
            mutated[pos] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del mutated[pos:]
        else:
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    _check_hostile(bytes(mutated))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(frames, st.binary(max_size=200)), max_size=12), st.binary(max_size=5))
def test_parse_many_equals_lenient_parsing_frame_by_frame(parts, gap):
    """Replay's batch parser (no GIL held on clean frames) against parse_frame_lenient on
    each frame: the same rows in order, each row's frame, and which frames were not clean."""
    data, offsets, lengths = b"", [], []
    for part in parts:
        data += gap                      # frames need not be contiguous
        offsets.append(len(data))
        lengths.append(len(part))
        data += part
    rows, owner, bad = parse_many(np.frombuffer(data, np.uint8),
                                  np.array(offsets, np.uint64), np.array(lengths, np.uint32))
    expect_rows, expect_owner, expect_bad = [], [], []
    for i, part in enumerate(parts):
        if len(part) < 2:                # heartbeats and empty records give no rows
            continue
        got, issues = parse_frame_lenient(part)
        expect_rows.append(got)
        expect_owner += [i] * len(got)
        if issues:
            expect_bad.append(i)
    assert rows.tobytes() == b"".join(r.tobytes() for r in expect_rows)
    assert owner.tolist() == expect_owner and bad == expect_bad


def test_parse_many_refuses_frames_outside_the_data():
    with pytest.raises(ValueError, match="runs past the data"):
        parse_many(np.zeros(10, np.uint8), np.array([8], np.uint64), np.array([4], np.uint32))


def _key_paths(value, prefix=()):
    """Every key path of nested dicts and lists, in iteration order."""
    if isinstance(value, dict):
        return [path for key, item in value.items()
                for path in [prefix + (key,)] + _key_paths(item, prefix + (key,))]
    if isinstance(value, list):
        return [path for i, item in enumerate(value) for path in _key_paths(item, prefix + (i,))]
    return []


def test_parse_ticks_keeps_kiteconnects_key_order_for_every_packet_kind():
    frame = frame_of(LTP, INDEX_QUOTE, INDEX_FULL, QUOTE, FULL)
    assert _key_paths(parse_ticks(frame)) == _key_paths(SDK._parse_binary(frame))


def test_parse_ticks_dicts_are_independent_objects():
    first, second = parse_ticks(frame_of(FULL, FULL))
    first["depth"]["buy"][0]["price"] = -1.0
    first["ohlc"]["open"] = -1.0
    assert second["depth"]["buy"][0]["price"] == 10.0 and second["ohlc"]["open"] == 0.1
    assert parse_ticks(frame_of(FULL))[0]["ohlc"]["open"] == 0.1


# --- parse_ticks setting template values by position --------------------------------------

from shrivenq._ext.kite_frame import _positional_fill  # noqa: E402


@pytest.fixture(params=["by position", "by key"])
def fill(request):
    """Run a test with parse_ticks setting values by entry position (the default where the
    CPython layout check passes), then by key through PyDict_SetItem."""
    before = _positional_fill()
    _positional_fill(request.param == "by position")
    yield request.param
    _positional_fill(before)


def _shape(value):
    """Value, type, key order, whether the cyclic GC tracks it and (for a dict) its size in
    memory, for nested dicts and lists."""
    import gc
    import sys
    if isinstance(value, dict):
        return ("dict", gc.is_tracked(value), sys.getsizeof(value),
                [(k, _shape(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", gc.is_tracked(value), [_shape(v) for v in value])
    return (type(value).__name__, value)


def test_positional_fill_is_in_use_on_the_cpythons_it_was_written_for():
    import sys
    import sysconfig
    layout_known = (sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13)
                    and not sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert _positional_fill() is layout_known


@settings(max_examples=200, deadline=None)
@given(frames)
def test_parse_ticks_matches_kiteconnect_in_types_order_size_and_gc_tracking(frame):
    for by_position in (True, False):
        before = _positional_fill()
        _positional_fill(by_position)
        try:
            assert _shape(parse_ticks(frame)) == _shape(SDK._parse_binary(frame))
        finally:
            _positional_fill(before)


def test_parse_ticks_dicts_are_ordinary_dicts(fill):
    tick = parse_ticks(frame_of(FULL))[0]
    sdk = SDK._parse_binary(frame_of(FULL))[0]
    for i in range(40):   # grows its table past the template's size
        tick[f"extra{i}"] = i
    for i in range(40):
        del tick[f"extra{i}"]
    del tick["mode"]
    tick["mode"] = sdk["mode"]
    sdk["mode"] = sdk.pop("mode")
    assert tick == sdk and list(tick) == list(sdk)
    level = tick["depth"]["sell"][4]
    level.update(quantity=7)
    assert level["quantity"] == 7 and dict(level) == level and len(level) == 3


def test_parse_ticks_leaks_no_references(fill):
    import sys
    import tracemalloc
    frame = frame_of(LTP, INDEX_QUOTE, INDEX_FULL, QUOTE, FULL)
    for _ in range(50):
        parse_ticks(frame)
    # A lost decref of a replaced template value shows on None's and the mode string's
    # counts (None is not immortal before 3.12), 2000 times over.
    none_refs, mode_refs = sys.getrefcount(None), sys.getrefcount("full")
    for _ in range(2000):
        parse_ticks(frame)
    assert (sys.getrefcount(None), sys.getrefcount("full")) == (none_refs, mode_refs)
    # An extra incref of a new value leaks the value.
    tracemalloc.start()
    try:
        for _ in range(50):
            parse_ticks(frame)
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            parse_ticks(frame)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 20_000, f"{grown} bytes still allocated after 2000 calls"


# --- parse_ticks and the cyclic GC --------------------------------------------------------

@pytest.mark.skipif(bool(__import__("sysconfig").get_config_var("Py_GIL_DISABLED")),
                    reason="a free-threaded build leaves the GC alone (other threads run)")
def test_parse_ticks_runs_no_garbage_collection_and_restores_the_gc_state():
    # A 500-packet frame makes thousands of dicts and lists: enough to set off several
    # collections, each walking ticks that are alive, unless parse_ticks pauses the GC.
    import gc
    frame = frame_of(*([FULL] * 500))
    started: list[int] = []

    def on_gc(phase, info):
        if phase == "start":
            started.append(info["generation"])

    assert gc.isenabled()
    gc.collect()   # so that the allocation count starts at zero
    gc.callbacks.append(on_gc)
    try:
        ticks = parse_ticks(frame)
        during = len(started)   # allocates no container, so sets off no collection
        pending = gc.get_count()[0]
    finally:
        gc.callbacks.remove(on_gc)
    assert during == 0, f"{during} collections ran inside parse_ticks"
    assert gc.isenabled()
    # The count of new containers was kept: the caller's next allocation collects them.
    assert pending > gc.get_threshold()[0]
    assert ticks == SDK._parse_binary(frame)
    gc.disable()
    try:
        parse_ticks(frame)
        assert not gc.isenabled(), "parse_ticks turned on a GC its caller had turned off"
    finally:
        gc.enable()


def test_parse_ticks_restores_the_gc_when_it_raises():
    import gc
    with pytest.raises(KiteFrameError):
        parse_ticks(frame_of(FULL)[:-1])
    assert gc.isenabled()
    # Out of memory inside the paused loop, at every allocation in turn.
    testcapi = pytest.importorskip("_testcapi")
    frame = frame_of(FULL, INDEX_FULL, QUOTE, FULL)
    failed = 0
    for start in range(1, 200):
        testcapi.set_nomemory(start, start + 1)
        try:
            parse_ticks(frame)
        except MemoryError:
            failed += 1
        finally:
            testcapi.remove_mem_hooks()
        assert gc.isenabled(), f"GC left off after a MemoryError at allocation {start}"
    assert failed > 20
