"""Binance depth: decode + apply into the L2 book, and replay from the WAL, against
python-binance's own DepthCache doing the same work on the same messages in the same run
(json.loads + DepthCacheManager._apply_orders' add_bid/add_ask), and the per-level book
cost against the sortedcontainers reference ladder. pytest-benchmark times shrivenq; the
comparison is timed in the same test; gates are ratios of medians, failing only below half
the target. The issue's absolute targets (2 us per 20+20-level message, 1M depth messages/s
replayed) are printed beside the measurement and not gated (the machine is shared); see
docs/PERFORMANCE.md. The decode + apply figure also prints its decoding share: the same
messages into a book already past them (decoded and found stale, nothing applied).

    .venv/bin/python -m pytest benches/bench_binance.py --benchmark-only -s
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest
from binance.ws.depthcache import DepthCache
from timing import median_seconds

from shrivenq.binance.books import BinanceBooks
from shrivenq.binance.decimal import format_fixed
from shrivenq.binance.decode import symbol_key
from shrivenq.binance.reference import ReferenceSync
from shrivenq.replay.binance import replay_wal
from shrivenq.binance.sync import BookSync
from shrivenq.books import ASK, BID
from shrivenq.capture.binance import WAL_LEVEL
from shrivenq.sim.binance_market import BinanceMarket, dumps
from shrivenq.wal import UTC, Kind, WalWriter
from shrivenq.wal import records as rec

BATCH = 2000
LEVELS = 20
TARGET_US = 2.0             # issue #6: decode + apply of a 20+20-level depthUpdate
TARGET_REPLAY = 1_000_000   # issue #6: depth messages replayed per second
TARGET_LEVEL_NS = 50        # the L2 ladder's target per level update (docs/PERFORMANCE.md)
# Ratio targets, gated at half: what the implementation delivers on this machine (2026-12-01,
# docs/PERFORMANCE.md "Binance"; replay's after its loop kept the syncs in C: 15-28x, median
# about 19x in eleven runs), kept as regression gates; the per-level one is the L2 ladder's.
SPEEDUP_DEPTHCACHE = 13     # decode + apply against python-binance's DepthCache
SPEEDUP_REPLAY = 18         # replay against reading the WAL + DepthCache
SPEEDUP_LEVEL = 10          # per level, against the sortedcontainers ladder


def twenty_level_messages(n: int, seed: int = 1):
    """A BTCUSDT book of 60 levels a side and ``n`` depthUpdates that each set 20 levels a
    side (10% deletions), spot format (8 decimals); ids contiguous."""
    rng = random.Random(seed)
    mid, last = 6_420_000, 1000
    p8 = lambda v: format_fixed(v, 2, 8)   # noqa: E731
    q8 = lambda v: format_fixed(v, 5, 8)   # noqa: E731
    bids = {mid - k: rng.randint(1, 10**6) for k in range(1, 61)}
    asks = {mid + k: rng.randint(1, 10**6) for k in range(1, 61)}
    snap = dumps({"lastUpdateId": last,
                  "bids": [[p8(p), q8(q)] for p, q in sorted(bids.items(), reverse=True)],
                  "asks": [[p8(p), q8(q)] for p, q in sorted(asks.items())]}).encode()
    out = []
    for i in range(n):
        side = [[(mid + sign * k, 0 if rng.random() < 0.1 else rng.randint(1, 10**6))
                 for k in rng.sample(range(1, 61), LEVELS)] for sign in (-1, 1)]
        data = {"e": "depthUpdate", "E": 1_763_600_000_000 + i, "s": "BTCUSDT",
                "U": last + 1, "u": last + 2 * LEVELS,
                "b": [[p8(p), q8(q)] for p, q in side[0]],
                "a": [[p8(p), q8(q)] for p, q in side[1]]}
        last += 2 * LEVELS
        out.append(dumps({"stream": "btcusdt@depth@100ms", "data": data}).encode())
    return snap, out


@pytest.fixture(scope="module")
def depth():
    info = dumps(BinanceMarket(seed=1).exchange_info()).encode()
    snap, msgs = twenty_level_messages(BATCH + 1)
    return info, snap, msgs


def synced_books(info, snap, first):
    books = BinanceBooks("spot", ["BTCUSDT"])
    books.on_exchange_info(info)
    books.on_message(first)
    books.on_snapshot("BTCUSDT", snap)
    assert books.syncs["BTCUSDT"].synced
    return books


def depthcache_apply(msgs):
    dc = DepthCache("BTCUSDT")
    for raw in msgs:
        data = json.loads(raw)["data"]
        for bid in data["b"]:
            dc.add_bid(bid)
        for ask in data["a"]:
            dc.add_ask(ask)


def test_decode_and_apply_a_20_level_depth_update(benchmark, depth):
    info, snap, msgs = depth
    first, rest = msgs[0], msgs[1:]

    def setup():
        return (synced_books(info, snap, first),), {}

    def run(books):
        on_message = books.on_message
        for raw in rest:
            on_message(raw)

    books = synced_books(info, snap, first)
    run(books)
    assert books.syncs["BTCUSDT"].counters.applied == BATCH + 1 and not books.counters.malformed
    sdk_s = median_seconds(depthcache_apply, 7, rest)
    ahead = synced_books(info, snap, first)
    ahead.syncs["BTCUSDT"].book_id = 10**17          # every message is stale: decoding only
    decode_s = median_seconds(run, 15, ahead)
    assert ahead.syncs["BTCUSDT"].counters.stale == 15 * BATCH
    benchmark.pedantic(run, setup=setup, rounds=15, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.median / BATCH
    theirs = sdk_s / BATCH
    ratio = theirs / ours
    decoding = decode_s / BATCH
    benchmark.extra_info.update({"us_per_message": round(ours * 1e6, 3),
                                 "decoding_us_per_message": round(decoding * 1e6, 3),
                                 "depthcache_us_per_message": round(theirs * 1e6, 2),
                                 "speedup_vs_depthcache": round(ratio, 1),
                                 "target_us": TARGET_US, "bytes_per_message": len(rest[0])})
    print(f"\n  decode+apply 20+20 levels: {ours * 1e6:.2f} us/message (target {TARGET_US} us; "
          f"decoding {decoding * 1e6:.2f} us), python-binance DepthCache {theirs * 1e6:.1f} us, "
          f"{ratio:.1f}x (target {SPEEDUP_DEPTHCACHE}x)")
    assert ratio >= SPEEDUP_DEPTHCACHE / 2, f"only {ratio:.1f}x python-binance's DepthCache"


def test_per_level_book_cost(benchmark, depth):
    """Applying already-decoded updates: the book's share of the per-message cost."""
    info, snap, msgs = depth
    books = synced_books(info, snap, msgs[0])
    from shrivenq._ext.binance_depth import decode_depth
    events = [decode_depth(raw, books.specs, False) for raw in msgs[1:]]
    levels = sum(len(e.bid_prices) + len(e.ask_prices) for e in events)

    def setup():
        return (synced_books(info, snap, msgs[0]).syncs["BTCUSDT"],), {}

    def run(sync: BookSync):
        on_event = sync.on_event
        for ev in events:
            on_event(ev)

    def reference():
        ref = ReferenceSync()
        ref.step("event", events[0])
        for ev in events:
            for side, prices, qtys in ((BID, ev.bid_prices, ev.bid_qtys),
                                       (ASK, ev.ask_prices, ev.ask_qtys)):
                for p, q in zip(prices.tolist(), qtys.tolist()):
                    ref.book.set_level(side, p, q)
            ref.book.best_bid(), ref.book.best_ask()

    ref_s = median_seconds(reference, 5)
    benchmark.pedantic(run, setup=setup, rounds=15, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.median / levels
    ratio = (ref_s / levels) / ours
    benchmark.extra_info.update({"ns_per_level": round(ours * 1e9, 1),
                                 "sortedcontainers_ns_per_level": round(ref_s / levels * 1e9, 1),
                                 "speedup": round(ratio, 1), "target_ns": TARGET_LEVEL_NS})
    print(f"\n  book apply: {ours * 1e9:.1f} ns/level incl. the sync's checks (ladder target "
          f"{TARGET_LEVEL_NS} ns), sortedcontainers {ref_s / levels * 1e9:.0f} ns, "
          f"{ratio:.1f}x (target {SPEEDUP_LEVEL}x)")
    assert ratio >= SPEEDUP_LEVEL / 2


@pytest.fixture(scope="module")
def captured_wal():
    """A WAL as capture writes it: session, exchangeInfo, a connection, snapshots, then
    100,000 depthUpdates of two symbols from the simulator's market (about 390 B each), at
    capture's zstd level. Written far faster than a feed sends, so it waits for the writer
    after about each 1 MB block: a writer that falls behind drops to level 1, which live
    capture's rates never make it do."""
    tmp = Path(tempfile.mkdtemp(prefix="shrivenq-bench-binance-"))
    market = BinanceMarket(seed=4, depth=60)
    syms = ["BTCUSDT", "ETHUSDT"]
    keys = {s: [symbol_key("spot", s)] for s in syms}
    t0 = 1_763_600_000_000_000_000
    msgs = []
    with WalWriter(tmp, "binance", "ticks", tz=UTC, fsync="never", level=WAL_LEVEL) as w:
        k, p = rec.session_start("bench", "binance", "0",
                                 ["market=spot", "symbols=" + ",".join(syms)])
        w.append(k, p, t0, t0)
        w.append(Kind.REST, dumps(market.exchange_info()).encode(), t0, t0)
        url = "ws://sim/stream?streams=" + "/".join(f"{s.lower()}@depth@100ms" for s in syms)
        k, p = rec.connect(1, url)
        w.append(k, p, t0, t0, 1)
        for i in range(100_000):
            s = syms[i % 2]
            raw = dumps({"stream": f"{s.lower()}@depth@100ms",
                         "data": market.depth_update(s)}).encode()
            w.append(Kind.TEXT, raw, t0 + i, t0 + i, 1, instruments=keys[s])
            msgs.append(raw)
            if i < 2:
                w.append(Kind.REST, dumps(market.snapshot(s)).encode(), t0 + i, t0 + i, 0,
                         instruments=keys[s])
            if i % 2400 == 2399:
                w.flush()
        w.flush()
        assert w.stats.fast_blocks == 0
    return tmp / "binance", msgs


def test_replay_captured_depth_into_books(benchmark, captured_wal):
    path, msgs = captured_wal
    rp = replay_wal(path)
    assert all(s.counters.applied >= len(msgs) // 2 - 1 for s in rp.books.syncs.values())
    assert not any(d[0] == "gap" for d in rp.decisions)

    def baseline():   # read the same WAL, then python-binance's DepthCache on each message
        from shrivenq.wal import read_wal
        batch = read_wal(path, "ticks")
        caches = {}
        for i in range(len(batch)):
            if batch.kind[i] == Kind.TEXT:
                data = json.loads(batch.payload(i))["data"]
                dc = caches.setdefault(data["s"], DepthCache(data["s"]))
                for bid in data["b"]:
                    dc.add_bid(bid)
                for ask in data["a"]:
                    dc.add_ask(ask)

    base_s = median_seconds(baseline, 3)
    benchmark.pedantic(replay_wal, (path,), rounds=5, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.median
    rate = len(msgs) / ours
    ratio = base_s / ours
    benchmark.extra_info.update({"messages_per_s": round(rate), "target": TARGET_REPLAY,
                                 "depthcache_messages_per_s": round(len(msgs) / base_s),
                                 "speedup": round(ratio, 1)})
    print(f"\n  replay: {rate / 1e3:.0f}k depth messages/s (target {TARGET_REPLAY / 1e6:.0f}M), "
          f"WAL + DepthCache {len(msgs) / base_s / 1e3:.0f}k/s, {ratio:.1f}x "
          f"(target {SPEEDUP_REPLAY}x)")
    assert ratio >= SPEEDUP_REPLAY / 2
