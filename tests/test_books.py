"""The compiled books against their plain-Python twins, step by step, and the derived
measures a trader reads off them."""

from __future__ import annotations

import doctest
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from shrivenq.books import (
    ASK, BID, KiteBooks, L2Ladder, imbalance, microprice, mid, spread, state_hash,
)
from shrivenq.books.reference import ReferenceKiteBooks, ReferenceLadder
from shrivenq.books.snapshot import encode_kite_snapshot
from shrivenq.kite import TICK_DTYPE, parse_frame
from shrivenq.kite.wire import encode_frame
from shrivenq.sim.market import KiteMarket, default_universe

# --- L2 ladder ------------------------------------------------------------------------------

updates = st.lists(st.tuples(st.sampled_from([BID, ASK]),
                             st.integers(-50, 50),             # prices collide often
                             st.sampled_from([0, 0, 1, 7, 10**12, 2**62])), max_size=400)


@settings(max_examples=300, deadline=None)
@given(updates, st.integers(1, 4))
def test_ladder_equals_sortedcontainers_reference_after_every_update(ops, capacity):
    ladder, ref = L2Ladder(capacity), ReferenceLadder()
    for side, price, qty in ops:
        ladder.set_level(side, price, qty)
        ref.set_level(side, price, qty)
        assert ladder.best_bid() == ref.best_bid() and ladder.best_ask() == ref.best_ask()
        assert ladder.is_crossed() == ref.is_crossed()
    for side in (BID, ASK):
        assert [tuple(x) for x in ladder.levels(side).tolist()] == ref.top(side, 10**6)
        assert [tuple(x) for x in ladder.top(side, 3).tolist()] == ref.top(side, 3)


@pytest.mark.parametrize("seed", range(4))
def test_deep_ladders_equal_the_reference(seed):
    """Books of up to a few thousand levels, updated mostly near the top and sometimes deep
    (the search bisects the top levels and gallops below them), prices at int64's ends."""
    rng = np.random.default_rng(seed)
    ladder, ref = L2Ladder(4), ReferenceLadder()
    extremes = [-2**63, 2**63 - 1, -2**63 + 1, 2**63 - 2]
    for step in range(6000):
        side = int(rng.integers(2))
        if step < 2500:
            price = int(rng.integers(0, 3000))
        elif rng.random() < 0.01:
            price = extremes[int(rng.integers(4))]
        else:   # near the touch or anywhere
            best = ref.best_bid() if side == BID else ref.best_ask()
            top = best[0] if best else 1500
            far = int(rng.integers(0, 3000)) if rng.random() < 0.2 else int(rng.integers(0, 80))
            price = top - far if side == BID else top + far
        qty = 0 if rng.random() < 0.3 else int(rng.integers(1, 10**9))
        ladder.set_level(side, price, qty)
        ref.set_level(side, price, qty)
        if step % 97 == 0:
            assert ladder.best_bid() == ref.best_bid() and ladder.best_ask() == ref.best_ask()
    assert ladder.depth(BID) > 500
    for side in (BID, ASK):
        assert [tuple(x) for x in ladder.levels(side).tolist()] == ref.top(side, 10**6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([BID, ASK]), st.integers(-400, 400),
                          st.sampled_from([0, 0, 3, 9])), max_size=500))
def test_a_small_window_equals_the_reference_as_levels_cross_its_edges(ops):
    """A 64-price window over 800 prices: levels move into and out of it, and it re-centres
    up and down, on every few updates."""
    ladder, ref = L2Ladder(2, window=64), ReferenceLadder()
    for side, price, qty in ops:
        ladder.set_level(side, price, qty)
        ref.set_level(side, price, qty)
        assert ladder.best_bid() == ref.best_bid() and ladder.best_ask() == ref.best_ask()
        assert ladder.depth(BID) == len(ref.top(BID, 10**6))
    for side in (BID, ASK):
        assert [tuple(x) for x in ladder.levels(side).tolist()] == ref.top(side, 10**6)


@pytest.mark.parametrize("window", [64, 256, 2048])
@pytest.mark.parametrize("seed", range(3))
def test_a_drifting_book_equals_the_reference(window, seed):
    """Updates around a mid that walks far (many windows) up and down, a third of them
    deletes, some far from the touch, with whole-book reads along the way."""
    rng = np.random.default_rng(seed)
    ladder, ref = L2Ladder(8, window=window), ReferenceLadder()
    mid = 0
    for step in range(8000):
        mid += int(rng.integers(-3, 4)) * (1 if step % 2000 < 1000 else 5)
        side = int(rng.integers(2))
        far = int(rng.integers(0, 4 * window)) if rng.random() < 0.1 else int(rng.integers(1, 40))
        price = mid - far if side == BID else mid + far
        qty = 0 if rng.random() < 0.33 else int(rng.integers(1, 10**6))
        ladder.set_level(side, price, qty)
        ref.set_level(side, price, qty)
        if step % 50 == 0:
            assert ladder.touch() == (*(ref.best_bid() or (0, 0)), *(ref.best_ask() or (0, 0)))
            for s in (BID, ASK):
                assert [tuple(x) for x in ladder.top(s, 20).tolist()] == ref.top(s, 20)
    for s in (BID, ASK):
        assert [tuple(x) for x in ladder.levels(s).tolist()] == ref.top(s, 10**6)
    ladder.clear()
    assert ladder.depth(BID) == ladder.depth(ASK) == 0 and ladder.touch() == (0, 0, 0, 0)
    ladder.set_level(ASK, 2**63 - 1, 1)
    ladder.set_level(ASK, -2**63, 2)
    assert ladder.levels(ASK).tolist() == [[-2**63, 2], [2**63 - 1, 1]]


def test_a_level_flickering_far_above_the_book_keeps_it_exact():
    """Inserting a level far above the book moves the window up, away from every other
    level; deleting it leaves the window empty until the book below has had a run of
    updates. The book stays exact throughout."""
    ladder, ref = L2Ladder(4, window=64), ReferenceLadder()
    rng = np.random.default_rng(5)
    for price in range(1000, 1200):
        ladder.set_level(BID, price, 7)
        ref.set_level(BID, price, 7)
    for step in range(600):
        if step % 100 < 2:      # in, then out
            ops = [(10**9, 1 - step % 2)]
        else:
            ops = [(int(rng.integers(900, 1300)), int(rng.choice([0, 3, 8])))]
        for price, qty in ops:
            ladder.set_level(BID, price, qty)
            ref.set_level(BID, price, qty)
        assert ladder.best_bid() == ref.best_bid()
        if step % 25 == 0:
            assert [tuple(x) for x in ladder.levels(BID).tolist()] == ref.top(BID, 10**6)


@pytest.mark.parametrize("window", [0, 63, 100, 2**17])
def test_a_window_that_is_not_a_power_of_two_from_64_is_refused(window):
    with pytest.raises(ValueError, match="power of two"):
        L2Ladder(window=window)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from([0, 5, 9])), max_size=200))
def test_batched_apply_equals_one_by_one(ops):
    batched, single = L2Ladder(), L2Ladder()
    prices = np.array([p for p, _ in ops], dtype=np.int64)
    qtys = np.array([q for _, q in ops], dtype=np.int64)
    batched.apply(ASK, prices, qtys)
    for p, q in ops:
        single.set_level(ASK, p, q)
    assert batched.state_bytes() == single.state_bytes()


def test_ladder_refuses_bad_updates_without_changing_the_book():
    ladder = L2Ladder()
    ladder.set_level(BID, 100, 5)
    before = ladder.state_bytes()
    with pytest.raises(ValueError, match="negative quantity -1 at price 99"):
        ladder.apply(BID, np.array([101, 99], dtype=np.int64), np.array([3, -1], dtype=np.int64))
    with pytest.raises(ValueError, match="2 prices but 1 quantities"):
        ladder.apply(BID, np.array([1, 2], dtype=np.int64), np.array([3], dtype=np.int64))
    with pytest.raises(ValueError, match="side must be BID"):
        ladder.set_level(2, 100, 1)
    assert ladder.state_bytes() == before


def test_crossed_book_is_detected():
    ladder = L2Ladder()
    ladder.set_level(BID, 100, 1)
    ladder.set_level(ASK, 101, 1)
    assert not ladder.is_crossed()
    ladder.set_level(BID, 101, 2)
    assert ladder.is_crossed()


# --- Kite books -----------------------------------------------------------------------------

@st.composite
def packet_rows(draw):
    """Rows of any kind for a few tokens, with random field values (as parse_frame gives)."""
    n = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    raw = rng.integers(0, 256, (n, TICK_DTYPE.itemsize), dtype=np.uint8)
    rows = raw.view(TICK_DTYPE).reshape(n).copy()
    tokens = np.array([256265, 260105, 408065, (12345 << 8) | 2], dtype=np.uint32)
    rows["token"] = tokens[rng.integers(0, len(tokens), n)]
    rows["kind"] = rng.integers(1, 6, n)
    # Make each row what parse_frame would give for its kind: re-parse its wire encoding.
    return parse_frame(encode_frame(rows))


@settings(max_examples=200, deadline=None)
@given(st.lists(packet_rows(), min_size=1, max_size=5))
def test_kite_books_equal_the_reference_after_every_batch(batches):
    books, ref = KiteBooks(capacity=1), ReferenceKiteBooks()
    for rows in batches:
        books.apply(rows)
        ref.apply(rows)
        assert books.state().tobytes() == ref.state().tobytes()
        for token, count in ref.ticks.items():
            assert books.ticks_applied(token) == count


def test_an_ltp_packet_moves_the_price_and_keeps_the_depth():
    market = KiteMarket(default_universe(3), seed=2)
    full = market.ticks(1, instruments=np.array([2]))
    books = KiteBooks()
    books.apply(full)
    ltp = full.copy()
    ltp = parse_frame(encode_frame(_as_kind(ltp, 1)))
    ltp["last_price"] += 5
    books.apply(ltp)
    book = books.book(int(full["token"][0]))
    assert book["last_price"] == full["last_price"][0] + 5
    assert (book["bid_price"] == full["bid_price"][0]).all() and book["fields"] == 63
    assert book["kind"] == 1 and books.book(1) is None


def _as_kind(rows, kind):
    rows["kind"] = kind
    return rows


def test_state_hash_is_order_free_and_sensitive_to_any_change():
    rows = KiteMarket(default_universe(20), seed=4).ticks(500)
    books = KiteBooks()
    books.apply(rows)
    state = books.state()
    assert state_hash(state) == state_hash(state[::-1].copy())
    changed = state.copy()
    changed["bid_quantity"][7, 4] += 1
    assert state_hash(changed) != state_hash(state)


def test_derived_measures_on_a_known_book():
    row = np.zeros(2, dtype=TICK_DTYPE)
    row["divisor"] = 100
    row["bid_price"][0, 0], row["ask_price"][0, 0] = 10000, 10010
    row["bid_quantity"][0] = [300, 100, 0, 0, 0]
    row["ask_quantity"][0] = [100, 100, 0, 0, 0]
    assert spread(row).tolist() == [10, -1]
    assert mid(row)[0] == 100.05 and np.isnan(mid(row)[1])
    assert microprice(row)[0] == pytest.approx((10000 * 100 + 10010 * 300) / 400 / 100)
    assert imbalance(row)[0] == pytest.approx((400 - 200) / 600)
    assert imbalance(row, levels=1)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        imbalance(row, levels=6)


@settings(max_examples=100, deadline=None)
@given(updates)
def test_apply_depth_and_touch_agree_with_the_reference(ops):
    ladder, ref = L2Ladder(2), ReferenceLadder()
    bids = [(p, q) for side, p, q in ops if side == BID]
    asks = [(p, q) for side, p, q in ops if side == ASK]
    as_arrays = [np.array([x for x, _ in lv], dtype=np.int64) for lv in (bids, asks)]
    qtys = [np.array([q for _, q in lv], dtype=np.int64) for lv in (bids, asks)]
    ladder.apply_depth(as_arrays[0], qtys[0], as_arrays[1], qtys[1])
    for p, q in bids:
        ref.set_level(BID, p, q)
    for p, q in asks:
        ref.set_level(ASK, p, q)
    bb, ba = ref.best_bid() or (0, 0), ref.best_ask() or (0, 0)
    assert ladder.touch() == (bb[0], bb[1], ba[0], ba[1])


def test_apply_depth_checks_both_sides_before_changing_either():
    ladder = L2Ladder()
    ladder.set_level(BID, 100, 5)
    before = ladder.state_bytes()
    good = np.array([101], dtype=np.int64)
    with pytest.raises(ValueError, match="negative quantity"):
        ladder.apply_depth(good, good, good, np.array([-3], dtype=np.int64))
    with pytest.raises(TypeError, match="int64"):
        ladder.apply_depth(good, good, good.astype(np.float64), good)
    with pytest.raises(TypeError, match="C-contiguous"):
        ladder.apply(BID, np.arange(10, dtype=np.int64)[::2], np.ones(5, dtype=np.int64))
    assert ladder.state_bytes() == before


# --- state_hash: the definition, pinned ----------------------------------------------------

# The documented row layout (docs/BOOKS.md): TICK_DTYPE's columns in order, packed, all
# little-endian, 180 bytes a row. Written out here independently of TICK_DTYPE.
ROW_LAYOUT = [
    ("token", "I"), ("last_price", "i"), ("last_quantity", "I"), ("average_price", "i"),
    ("volume", "I"), ("total_buy_quantity", "I"), ("total_sell_quantity", "I"),
    ("open", "i"), ("high", "i"), ("low", "i"), ("close", "i"), ("last_trade_time", "I"),
    ("oi", "I"), ("oi_day_high", "I"), ("oi_day_low", "I"), ("exchange_timestamp", "I"),
    ("change", "i"), ("bid_quantity", "5I"), ("bid_price", "5i"), ("ask_quantity", "5I"),
    ("ask_price", "5i"), ("bid_orders", "5H"), ("ask_orders", "5H"), ("divisor", "I"),
    ("fields", "H"), ("packet_length", "H"), ("segment", "B"), ("kind", "B"), ("mode", "B"),
    ("tradable", "B"),
]
ROW_STRUCT = struct.Struct("<" + "".join(code for _, code in ROW_LAYOUT))

# Two full-mode books, every column set; negative prices, u32 values above 2**31 and u16
# order counts, so that a change of sign, width or byte order shows. Token order reversed.
FIXED_BOOKS = [
    dict(token=738561, last_price=245_065, last_quantity=12, average_price=244_980,
         volume=3_000_000_123, total_buy_quantity=410_000, total_sell_quantity=395_500,
         open=243_000, high=246_100, low=242_750, close=244_000, last_trade_time=1_763_610_312,
         oi=0, oi_day_high=0, oi_day_low=0, exchange_timestamp=1_763_610_313, change=-1_505,
         bid_quantity=[10, 20, 30, 40, 2**32 - 1], bid_price=[245_060, 245_055, 245_050,
                                                           245_045, -5],
         ask_quantity=[11, 21, 31, 41, 51], ask_price=[245_070, 245_075, 245_080, 245_085,
                                                      245_090],
         bid_orders=[1, 2, 3, 4, 65_535], ask_orders=[5, 6, 7, 8, 9], divisor=100, fields=63,
         packet_length=184, segment=1, kind=5, mode=2, tradable=1),
    dict(token=408065, last_price=-5, last_quantity=1, average_price=150_025, volume=7,
         total_buy_quantity=2**31, total_sell_quantity=1, open=150_000, high=151_000,
         low=149_000, close=150_500, last_trade_time=1_763_610_300, oi=2**32 - 2,
         oi_day_high=2**32 - 1, oi_day_low=3, exchange_timestamp=1_763_610_301,
         change=-(2**31), bid_quantity=[1, 0, 0, 0, 0], bid_price=[-10, 0, 0, 0, 0],
         ask_quantity=[2, 0, 0, 0, 0], ask_price=[2**31 - 1, 0, 0, 0, 0],
         bid_orders=[1, 0, 0, 0, 0], ask_orders=[300, 0, 0, 0, 0], divisor=100, fields=63,
         packet_length=184, segment=1, kind=5, mode=2, tradable=1),
]
# xxh3-64 (seed 0) of the two rows above, in token order. A new definition of state_hash
# (layout, order, hash function, seed) changes every stored snapshot's hash: it must be a
# new snapshot format version, not a silent change that makes --verify fail on old captures.
FIXED_BOOKS_HASH = 0x70FFE96EF5D35734


def _canonical_bytes(books) -> bytes:
    """The documented definition, by hand: each row's columns packed little-endian in the
    documented order, rows in ascending token order."""
    out = b""
    for book in sorted(books, key=lambda b: b["token"]):
        values = []
        for name, code in ROW_LAYOUT:
            values.extend(book[name] if code.startswith("5") else [book[name]])
        out += ROW_STRUCT.pack(*values)
    return out


def _rows(books) -> np.ndarray:
    rows = np.zeros(len(books), dtype=TICK_DTYPE)
    for i, book in enumerate(books):
        for name, value in book.items():
            rows[name][i] = value
    return rows


def test_state_hash_follows_its_documented_definition_and_is_pinned():
    assert ROW_STRUCT.size == TICK_DTYPE.itemsize == 180
    canonical = _canonical_bytes(FIXED_BOOKS)
    expected = xxhash.xxh3_64_intdigest(canonical, seed=0)
    rows = _rows(FIXED_BOOKS)                       # 738561 before 408065: not token order
    assert state_hash(rows) == expected
    assert state_hash(rows[::-1].copy()) == expected
    # The books give the same state (a full packet sets every column) and so the same hash,
    # and a snapshot stores it.
    books = KiteBooks()
    books.apply(rows)
    assert books.state().tobytes() == canonical
    assert state_hash(books.state()) == expected
    stored = msgpack.unpackb(encode_kite_snapshot(rows, "s", 0, 1), raw=False)
    assert stored["hash"] == expected and stored["rows"] == canonical
    # Pinned, so that a change of definition cannot pass unnoticed on every machine at once.
    assert expected == FIXED_BOOKS_HASH


def test_the_example_in_the_books_documentation_runs():
    """docs/BOOKS.md's example, outputs and state hash included, as a doctest."""
    result = doctest.testfile(str(Path(__file__).parent.parent / "docs" / "BOOKS.md"),
                              module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 20 and result.failed == 0
