"""The compiled depth fast path (``shrivenq._ext.binance_depth.on_depth``: decode, check the
sequence and apply into the ladder from C) against the plain path (the Python decoder, then
``BookSync.on_event``), message by message: on random streams with gaps, duplicates,
reordering, crossed books, lagging, crossed and broken snapshots, disconnects, ids beyond
int64 and hostile or unusual messages, both reach the same books, update ids, actions and
counters after every input."""

from __future__ import annotations

import functools
import json
import random

import pytest

from shrivenq.binance import sync as sync_mod
from shrivenq.binance.books import BinanceBooks
from shrivenq.binance.decimal import format_fixed
from shrivenq.binance.decode import symbol_key
from shrivenq.replay import binance as replay_mod
from shrivenq.sim.binance_market import BinanceMarket, dumps
from shrivenq.wal import UTC, Kind, WalWriter, read_wal
from shrivenq.wal import records as rec

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def snapshot_of(sync):
    return (sync.book_id, sync.book.state_bytes(), sync.counters.as_dict(), len(sync.buffer),
            [tuple(e[:5]) for e in sync.buffer], sync.fetching,
            None if sync.pending is None else sync.pending.last_update_id)


def state_of(books):
    return ({sym: snapshot_of(s) for sym, s in books.syncs.items()},
            books.counters.as_dict(), books.last_error)


class Pair:
    """The same inputs into a fast and a plain BinanceBooks; every result compared."""

    def __init__(self, market: str):
        self.fast = BinanceBooks(market, SYMBOLS)
        self.plain = BinanceBooks(market, SYMBOLS, fast=False)
        self.actions: list[tuple] = []
        self.inputs: list[tuple] = []

    def feed(self, method: str, *args):
        self.inputs.append((method, args))
        got = getattr(self.fast, method)(*args)
        want = getattr(self.plain, method)(*args)
        assert [tuple(a) for a in (got or ())] == [tuple(a) for a in (want or ())], \
            (method, args[-1][:200] if args and isinstance(args[-1], bytes) else args)
        assert state_of(self.fast) == state_of(self.plain), (method, args)
        self.actions.extend(tuple(a) for a in (got or ()))
        return got or ()


def hostile(raw: bytes, data: dict, rng: random.Random, spec_scale: int) -> bytes:
    """One of the ways a depth message can be unusual or wrong."""
    stream = f"{data['s'].lower()}@depth@100ms"
    kind = rng.randrange(12)
    d = dict(data)
    if kind == 0:     # a negative quantity on the last level: nothing may be half-applied
        side = "a" if d["a"] else "b"
        d[side] = d[side][:-1] + [[d[side][-1][0], "-1.00000000"]] if d[side] else d[side]
    elif kind == 1:   # more decimal places than the scale
        d["b"] = d["b"] + [["1." + "1" * (spec_scale + 1), "1"]]
    elif kind == 2:   # U > u
        d["U"], d["u"] = d["u"] + 5, d["u"]
    elif kind == 3:   # ids beyond what the compiled decoder reads (and beyond int64)
        d["U"], d["u"] = d["U"] + 10**19, d["u"] + 10**19
        if "pu" in d:
            d["pu"] += 10**19
    elif kind == 4:   # an unknown symbol
        d["s"] = "NOPEUSDT"
    elif kind == 5:   # valid but unusual: whitespace and key order (the compiled path declines)
        return json.dumps({"data": d, "stream": stream}, indent=1).encode()
    elif kind == 6:   # an escaped event type: valid JSON, declined by the compiled decoder
        return dumps({"stream": stream, "data": d}).replace(
            '"depthUpdate"', '"depth\\u0055pdate"').encode()
    elif kind == 7:   # a missing field
        del d["a"]
    elif kind == 8:   # decimals in exponent form: valid, declined by the compiled decoder
        d["b"] = [[p, "1E-2"] for p, _ in d["b"][:3]]
    elif kind == 9:   # byte mutations
        b = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] = rng.choice(b'{}[]":,.0123456789eE-+ abcdu\\')
        return bytes(b)
    elif kind == 10:  # not a depth message at all
        return b"[1, 2, 3]"
    else:             # a duplicate key: the last one wins
        return raw.replace(b'"U":', b'"U":0,"U":', 1)
    return dumps({"stream": stream, "data": d}).encode()


def run(seed: int, futures: bool, events: int = 800, p_drop=0.01, p_dup=0.03, p_swap=0.02,
        p_cross=0.004, p_hostile=0.02, p_lag=0.3, p_bad_snapshot=0.05, p_disconnect=0.003):
    rng = random.Random(seed)
    market = BinanceMarket(futures=futures, seed=seed, depth=25)
    pair = Pair("usdm" if futures else "spot")
    pair.feed("on_exchange_info", dumps(market.exchange_info()).encode())
    url = "wss://x/stream?streams=" + "/".join(f"{s.lower()}@depth@100ms" for s in SYMBOLS)
    pair.feed("on_connect", 1, url)
    specs = pair.fast.specs
    wanted: dict[str, int] = {}      # symbol -> input count at which its snapshot arrives
    outbox: list[bytes] = []
    recent: list[bytes] = []
    n = 0

    def deliver(raw: bytes):
        nonlocal n
        n += 1
        for a in pair.feed("on_message", raw):
            if a[0] == sync_mod.FETCH:
                wanted[a[1]] = n + rng.randint(0, 4)
        for sym, at in list(wanted.items()):
            if n < at:
                continue
            del wanted[sym]
            truth = market.books[sym]
            last = truth.last_id
            if rng.random() < p_lag:
                last = truth.history[max(0, len(truth.history) - 1 - rng.randint(1, 30))][0]
            doc = market.snapshot(sym, at=last)
            r = rng.random()
            if r < p_bad_snapshot:
                body = b"<html>502</html>"
            elif r < 2 * p_bad_snapshot and doc["asks"]:     # crossed
                doc["bids"].insert(0, [doc["asks"][0][0], "1.00000000"])
                body = dumps(doc).encode()
            else:
                body = dumps(doc).encode()
            for a in pair.feed("on_snapshot", sym, body):
                if a[0] == sync_mod.FETCH:
                    wanted[a[1]] = n + 1

    for _ in range(events):
        sym = rng.choice(SYMBOLS)
        r = rng.random()
        if r < 0.05:
            outbox.append(dumps({"stream": f"{sym.lower()}@trade",
                                 "data": market.trade(sym)}).encode())
        elif r < 0.08:
            outbox.append(dumps({"stream": f"{sym.lower()}@bookTicker",
                                 "data": market.book_ticker(sym)}).encode())
        else:
            data = market.depth_update(sym)
            spec = specs[sym]
            if rng.random() < p_cross:   # an exchange bug: a bid at the best ask
                truth = market.books[sym]
                best_ask = min(truth.asks) if truth.asks else truth.mid
                data = dict(data, b=data["b"] + [[format_fixed(best_ask, spec.price_scale), "1"]])
            raw = dumps({"stream": f"{sym.lower()}@depth@100ms", "data": data}).encode()
            if rng.random() < p_hostile:
                raw = hostile(raw, data, rng, spec.price_scale)
            recent = (recent + [raw])[-6:]
            if rng.random() >= p_drop:
                outbox.append(raw)
            if rng.random() < p_dup:
                outbox.append(rng.choice(recent))
        if len(outbox) > 1 and rng.random() < p_swap:
            outbox[-1], outbox[-2] = outbox[-2], outbox[-1]
        while len(outbox) > 1:
            deliver(outbox.pop(0))
        if rng.random() < p_disconnect:
            pair.feed("on_disconnect", 1, "drop")
            pair.feed("on_connect", 1, url)
    for raw in outbox:
        deliver(raw)
    return pair


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_a_clean_stream_is_applied_by_the_fast_path_with_the_same_results(futures, monkeypatch):
    calls = []
    original = sync_mod.BookSync.on_event

    def counting(self, ev):
        calls.append(ev)
        return original(self, ev)

    monkeypatch.setattr(sync_mod.BookSync, "on_event", counting)
    pair = run(1, futures, events=600, p_drop=0, p_dup=0, p_swap=0, p_cross=0, p_hostile=0,
               p_lag=0, p_bad_snapshot=0, p_disconnect=0)
    fast = pair.fast.syncs
    assert all(s.synced for s in fast.values())
    applied = sum(s.counters.applied for s in fast.values())
    plain_calls = pair.plain.counters.depth   # the plain books call on_event for every event
    assert applied > 400 and len(calls) - plain_calls < 10   # the fast one hardly ever does


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_duplicates_and_late_events_are_counted_stale_the_same_way(futures):
    pair = run(2, futures, p_drop=0, p_dup=0.3, p_swap=0.1, p_cross=0, p_hostile=0)
    stale = sum(s.counters.stale for s in pair.fast.syncs.values())
    assert stale > 50


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_crossing_updates_are_gaps_and_resyncs_the_same_way(futures):
    pair = run(3, futures, events=1000, p_cross=0.03)
    assert any(a[0] == sync_mod.GAP and a[2] == "crossed" for a in pair.actions)


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_a_book_id_beyond_int64_goes_the_plain_way(futures):
    """Ids of 20 digits are the Python decoder's, and so is a book at such an id: the events
    the compiled decoder reads after it are handed to BookSync.on_event."""
    market = BinanceMarket(futures=futures, seed=5, depth=10)
    pair = Pair("usdm" if futures else "spot")
    pair.feed("on_exchange_info", dumps(market.exchange_info()).encode())
    big = 10**19
    data = market.depth_update("BTCUSDT")

    def msg(first, last, prev):
        d = dict(data, U=first, u=last)
        if futures:
            d["pu"] = prev
        return dumps({"stream": "btcusdt@depth@100ms", "data": d}).encode()

    assert [a[0] for a in pair.feed("on_message", msg(big + 1, big + 2, big))] == ["fetch"]
    doc = market.snapshot("BTCUSDT")
    doc["lastUpdateId"] = big
    assert [a[0] for a in pair.feed("on_snapshot", "BTCUSDT", dumps(doc).encode())] == ["synced"]
    assert pair.fast.syncs["BTCUSDT"].book_id == big + 2
    assert pair.feed("on_message", msg(5, 6, 4)) == ()          # stale, decided in Python
    assert pair.fast.syncs["BTCUSDT"].counters.stale == 1
    actions = pair.feed("on_message", msg(big + 3, big + 4, big + 2))   # applied, in Python
    assert actions == () and pair.fast.syncs["BTCUSDT"].book_id == big + 4
    pair.feed("on_message", msg(big + 9, big + 10, big + 8))    # a gap
    assert [a[:3] for a in pair.actions[-2:]] == [("gap", "BTCUSDT", "sequence"),
                                                  ("fetch", "BTCUSDT", "resync")]


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
@pytest.mark.parametrize("seed", range(10))
def test_random_hostile_streams_agree_with_the_plain_path(seed, futures):
    pair = run(100 + seed, futures, p_drop=0.02, p_dup=0.05, p_swap=0.03,
               p_cross=0.01 if seed % 2 else 0.0, p_hostile=0.05, p_disconnect=0.005)
    kinds = {a[0] for a in pair.actions}
    assert sync_mod.SYNCED in kinds


def write_wal(tmp_path, market: str, inputs) -> None:
    """The inputs as capture records them (shrivenq/capture/binance.py), in small blocks so
    that runs of stream messages are cut by block ends too."""
    venue = "binance" if market == "spot" else "binance-usdm"
    t = 1_763_600_000_000_000_000
    with WalWriter(tmp_path, venue, "ticks", tz=UTC, fsync="never", block_bytes=4096) as w:
        k, payload = rec.session_start("t", venue, "0", [f"market={market}",
                                                         "symbols=" + ",".join(SYMBOLS)])
        w.append(k, payload, t, t)
        for i, (method, args) in enumerate(inputs):
            t += 1
            if method == "on_exchange_info":
                w.append(Kind.REST, args[0], t, t)
            elif method == "on_connect":
                k, payload = rec.connect(*args)
                w.append(k, payload, t, t, args[0])
            elif method == "on_disconnect":
                k, payload = rec.disconnect(args[0], None, args[1])
                w.append(k, payload, t, t, args[0])
            elif method == "on_snapshot":
                w.append(Kind.REST, args[1], t, t, 0, instruments=[symbol_key(market, args[0])])
            else:
                raw = args[0]
                sym = next((s for s in SYMBOLS if s.encode() in raw), None)
                w.append(Kind.TEXT, raw, t, t, 1,
                         instruments=[symbol_key(market, sym)] if sym else None)


def replay_result(rp):
    return (rp.books.state(), rp.decisions, rp.records, rp.books.counters.as_dict(),
            {s: y.counters.as_dict() for s, y in rp.books.syncs.items()}, rp.books.last_error)


def replays_agree(venue, monkeypatch):
    """replay_wal's result (the compiled loop), checked against feeding the records one by
    one and against replay with the fast path off."""
    batched = replay_result(replay_mod.replay_wal(venue))
    batch = read_wal(venue, "ticks")
    one_by_one = replay_mod.BinanceReplay()
    for i in range(len(batch)):
        keys = batch.instruments(i) if batch.inst_count[i] else ()
        one_by_one.feed(int(batch.kind[i]), int(batch.conn[i]), batch.payload(i), keys)
    assert batched == replay_result(one_by_one)
    with monkeypatch.context() as m:
        m.setattr(replay_mod, "BinanceBooks", functools.partial(BinanceBooks, fast=False))
        assert batched == replay_result(replay_mod.replay_wal(venue))
    return batched


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
@pytest.mark.parametrize("seed", range(3))
def test_replay_of_a_wal_agrees_with_the_plain_path(tmp_path, seed, futures, monkeypatch):
    """replay_wal runs stream messages through its compiled loop; record by record through
    BinanceBooks.on_message, or with the fast path off, the result is the same."""
    market = "usdm" if futures else "spot"
    pair = run(200 + seed, futures, events=600, p_drop=0.02, p_dup=0.05, p_swap=0.03,
               p_cross=0.01, p_hostile=0.05, p_disconnect=0.005)
    write_wal(tmp_path, market, pair.inputs)
    batched = replays_agree(tmp_path / ("binance-usdm" if futures else "binance"), monkeypatch)
    assert batched[0] == pair.fast.state()      # and the books the live run had
    assert any(d[0] == sync_mod.GAP for d in batched[1])


def test_replay_loop_refuses_records_outside_their_data():
    import numpy as np

    from shrivenq._ext.binance_depth import on_depth_records
    books = BinanceBooks("spot", SYMBOLS)
    books.on_exchange_info(dumps(BinanceMarket(seed=1).exchange_info()).encode())
    kinds = np.array([Kind.TEXT], dtype=np.uint8)
    with pytest.raises(ValueError, match="outside"):
        on_depth_records(books, b"{}", kinds, np.array([1], dtype=np.uint64),
                         np.array([5], dtype=np.uint32), 0, int(Kind.TEXT), [])
    assert on_depth_records(books, b"[1]", kinds, np.array([0], dtype=np.uint64),
                            np.array([3], dtype=np.uint32), 0, int(Kind.TEXT), []) == 1
    assert books.counters.messages == 1 and books.counters.malformed == 1   # via on_message
    with pytest.raises(ValueError, match="1 kinds but 0 offsets"):   # columns of one batch
        on_depth_records(books, b"[1]", kinds, np.array([], dtype=np.uint64),
                         np.array([3], dtype=np.uint32), 0, int(Kind.TEXT), [])
    assert books.counters.messages == 1


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_replay_of_many_symbols_agrees_with_the_plain_path(tmp_path, futures, monkeypatch):
    """on_depth_records keeps each symbol's sync in a table of 32 slots while it runs: 40
    symbols share slots, trades and bookTickers cut the runs, and gaps, crossed books,
    duplicates and disconnects send messages to BookSync; replay gives what the plain path
    gives, and what feeding the records one by one gives."""
    from shrivenq.sim.binance_market import SimSymbol
    market_name = "usdm" if futures else "spot"
    venue = "binance-usdm" if futures else "binance"
    syms = [SimSymbol(f"S{i:02d}USDT", 10_000 + 37 * i, 2 + i % 4, 1 + i % 5) for i in range(40)]
    market = BinanceMarket(syms, futures=futures, seed=7, depth=12)
    names = [s.symbol for s in syms]
    keys = {s: [symbol_key(market_name, s)] for s in names}
    rng = random.Random(11)
    t = 1_763_600_000_000_000_000
    with WalWriter(tmp_path, venue, "ticks", tz=UTC, fsync="never", block_bytes=16384) as w:
        k, payload = rec.session_start("t", venue, "0", [f"market={market_name}"])
        w.append(k, payload, t, t)
        w.append(Kind.REST, dumps(market.exchange_info()).encode(), t, t)
        url = "wss://x/stream?streams=" + "/".join(f"{s.lower()}@depth@100ms" for s in names)
        k, payload = rec.connect(1, url)
        w.append(k, payload, t, t, 1)
        unsynced = set(names)     # symbols whose sync wants a snapshot (after their next event)
        for i in range(6000):
            t += 1
            sym = rng.choice(names)
            r = rng.random()
            if r < 0.05:
                raw = dumps({"stream": f"{sym.lower()}@trade", "data": market.trade(sym)})
            else:
                data = market.depth_update(sym)
                if rng.random() < 0.005 and data["a"]:     # a bid at an ask: crossed
                    data = dict(data, b=data["b"] + [[data["a"][0][0], "1"]])
                    unsynced.add(sym)
                raw = dumps({"stream": f"{sym.lower()}@depth@100ms", "data": data})
                if rng.random() < 0.01:
                    unsynced.add(sym)
                    continue                                # lost: a gap
            w.append(Kind.TEXT, raw.encode(), t, t, 1, instruments=keys[sym])
            if rng.random() < 0.02:
                w.append(Kind.TEXT, raw.encode(), t, t, 1, instruments=keys[sym])   # duplicate
            if sym in unsynced or rng.random() < 0.002:
                unsynced.discard(sym)
                w.append(Kind.REST, dumps(market.snapshot(sym)).encode(), t, t, 0,
                         instruments=keys[sym])
            if rng.random() < 0.001:
                for rk, rp in (rec.disconnect(1, None, "drop"), rec.connect(1, url)):
                    w.append(rk, rp, t, t, 1)
                unsynced.update(names)
    batched = replays_agree(tmp_path / venue, monkeypatch)
    counters = batched[4]
    assert sum(c["applied"] for c in counters.values()) > 4000
    assert sum(c["stale"] for c in counters.values()) > 50
    assert {d[2] for d in batched[1] if d[0] == sync_mod.GAP} >= {"sequence", "crossed"}


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_replay_loop_reads_nothing_past_a_record(futures):
    """A record cut anywhere near its end, followed in its batch's data by digits and the
    rest of a message: the decoder must see only the record's own bytes (the eight-byte
    decimal reads included), so it declines it, and on_message finds it malformed. The
    record before it syncs its symbol's entry in the loop's table, so the cut one meets the
    loop that runs without the GIL first."""
    import numpy as np

    from shrivenq._ext.binance_depth import on_depth_records
    market = BinanceMarket(futures=futures, seed=3, depth=10)
    info = dumps(market.exchange_info()).encode()

    def message():
        return dumps({"stream": "btcusdt@depth@100ms",
                      "data": market.depth_update("BTCUSDT")}).encode()

    snap = dumps(market.snapshot("BTCUSDT")).encode()
    first, good, raw = message(), message(), message()
    tail = b'0123456789012345678"]]}}' + raw
    kinds = np.array([Kind.TEXT, Kind.TEXT], dtype=np.uint8)
    market_name = "usdm" if futures else "spot"
    for cut in range(len(raw) - 40, len(raw) + 1):
        fast = BinanceBooks(market_name, SYMBOLS)
        plain = BinanceBooks(market_name, SYMBOLS, fast=False)
        for books in (fast, plain):
            books.on_exchange_info(info)
            books.on_message(first)
            books.on_snapshot("BTCUSDT", snap)
        assert fast.syncs["BTCUSDT"].synced
        decisions: list = []
        data = good + raw[:cut] + tail
        assert on_depth_records(fast, data, kinds, np.array([0, len(good)], dtype=np.uint64),
                                np.array([len(good), cut], dtype=np.uint32), 0,
                                int(Kind.TEXT), decisions) == 2
        want = [tuple(a) for m in (good, raw[:cut]) for a in plain.on_message(m)]
        assert decisions == want and state_of(fast) == state_of(plain), cut
        assert fast.counters.malformed == (cut < len(raw)), cut
        assert fast.syncs["BTCUSDT"].counters.applied == 2 + (cut == len(raw)), cut


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_replay_of_wide_messages_and_deep_books_agrees_with_the_plain_path(
        tmp_path, futures, monkeypatch):
    """Replay applies most messages without the GIL and hands back the ones that loop cannot
    finish: a message with more levels a side than its buffer holds (1024) and a book that
    must grow past its ladder's capacity (1024 levels a side). Both go the GIL's way and
    give what the plain path gives."""
    market_name = "usdm" if futures else "spot"
    venue = "binance-usdm" if futures else "binance"
    market = BinanceMarket(futures=futures, seed=9, depth=10)
    spec = market.specs["BTCUSDT"]
    px = lambda v: format_fixed(v, spec.price_scale, 8)     # noqa: E731
    qty = lambda v: format_fixed(v, spec.qty_scale, 8)      # noqa: E731
    mid, last = 5_000_000, 100
    key = [symbol_key(market_name, "BTCUSDT")]
    t = 1_763_600_000_000_000_000

    def update(bids, asks):
        nonlocal last
        data = {"e": "depthUpdate", "E": t // 10**6}
        if futures:
            data["T"] = t // 10**6
        data.update({"s": "BTCUSDT", "U": last + 1, "u": last + 1})
        if futures:
            data["pu"] = last
        data.update({"b": [[px(p), qty(q)] for p, q in bids],
                     "a": [[px(p), qty(q)] for p, q in asks]})
        last += 1
        return dumps({"stream": "btcusdt@depth@100ms", "data": data}).encode()

    snap = dumps({"lastUpdateId": last, "bids": [[px(mid - 1), qty(5)]],
                  "asks": [[px(mid + 1), qty(5)]]}).encode()
    with WalWriter(tmp_path, venue, "ticks", tz=UTC, fsync="never") as w:
        k, payload = rec.session_start("t", venue, "0", [f"market={market_name}",
                                                         "symbols=BTCUSDT"])
        w.append(k, payload, t, t)
        w.append(Kind.REST, dumps(market.exchange_info()).encode(), t, t)
        k, payload = rec.connect(1, "wss://x/stream?streams=btcusdt@depth@100ms")
        w.append(k, payload, t, t, 1)
        w.append(Kind.TEXT, update([(mid - 2, 1)], []), t, t, 1, instruments=key)
        w.append(Kind.REST, snap, t, t, 0, instruments=key)
        level = 2
        for i in range(12):     # 300 new levels a side each: the ladder grows past 1024
            bids = [(mid - level - j, 1 + j) for j in range(300)]
            asks = [(mid + level + j, 1 + j) for j in range(300)]
            level += 300
            if i == 6:          # and one message of 1500 levels a side
                bids += [(mid - level - j, 7) for j in range(1200)]
                asks += [(mid + level + j, 7) for j in range(1200)]
                level += 1200
            w.append(Kind.TEXT, update(bids, asks), t, t, 1, instruments=key)
            w.append(Kind.TEXT, update([(mid - 2, i)], [(mid + 2, 0)]), t, t, 1,
                     instruments=key)
    batched = replays_agree(tmp_path / venue, monkeypatch)
    rp = replay_mod.replay_wal(tmp_path / venue)
    book = rp.books.syncs["BTCUSDT"].book
    # mid - 1 from the snapshot and every level added (mid - 2 is one of them); the asks lost
    # mid + 2 again
    assert book.depth(0) == 1 + 12 * 300 + 1200 and book.depth(1) == 12 * 300 + 1200
    assert batched[4]["BTCUSDT"]["applied"] == 25


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_a_new_exchange_info_reaches_the_compiled_path(futures, monkeypatch):
    """on_message's compiled router keeps the specs it was given: each exchangeInfo (here a
    second one, with BTCUSDT's tick size changed) must reach it, or it would decode with
    old scales or leave every message to the plain path."""
    calls = []
    original = sync_mod.BookSync.on_event
    monkeypatch.setattr(sync_mod.BookSync, "on_event",
                        lambda self, ev: calls.append(self) or original(self, ev))
    market = BinanceMarket(futures=futures, seed=12, depth=10)
    pair = Pair("usdm" if futures else "spot")
    info = market.exchange_info()
    pair.feed("on_exchange_info", dumps(info).encode())
    for sym in SYMBOLS:
        pair.feed("on_message", dumps({"stream": f"{sym.lower()}@depth@100ms",
                                       "data": market.depth_update(sym)}).encode())
        pair.feed("on_snapshot", sym, dumps(market.snapshot(sym)).encode())
    changed = json.loads(dumps(info))
    btc = next(s for s in changed["symbols"] if s["symbol"] == "BTCUSDT")
    for f in btc["filters"]:
        if f["filterType"] == "PRICE_FILTER":
            f["tickSize"] = "1.00000000"      # fewer decimals: the old prices no longer fit
    pair.feed("on_exchange_info", dumps(changed).encode())
    assert pair.fast.specs["BTCUSDT"].price_scale == 0
    calls.clear()
    for _ in range(30):
        for sym in SYMBOLS:
            pair.feed("on_message", dumps({"stream": f"{sym.lower()}@depth@100ms",
                                           "data": market.depth_update(sym)}).encode())
    assert pair.fast.counters.malformed > 0          # BTCUSDT's cents no longer fit
    # the plain books send all 30 of ETHUSDT's events to BookSync.on_event, the compiled
    # path (nearly) none
    assert calls.count(pair.plain.syncs["ETHUSDT"]) == 30
    assert calls.count(pair.fast.syncs["ETHUSDT"]) <= 2


def test_books_are_freed_with_their_last_reference():
    """The compiled router holds its books weakly: no reference cycle keeps a book of
    thousands of levels alive until the next garbage collection."""
    import weakref
    books = BinanceBooks("spot", SYMBOLS)
    books.on_exchange_info(dumps(BinanceMarket(seed=1).exchange_info()).encode())
    on_message = books.on_message
    gone = weakref.ref(books)
    del books
    assert gone() is None
    with pytest.raises(ReferenceError, match="BinanceBooks"):
        on_message(b"[1]")


def test_a_subclass_that_overrides_on_message_keeps_its_own():
    class Counting(BinanceBooks):
        seen = 0

        def on_message(self, raw):
            self.seen += 1
            return super().on_message(raw)

    books = Counting("spot", SYMBOLS)
    books.on_message(b"[1]")
    assert books.seen == 1 and books.counters.malformed == 1
