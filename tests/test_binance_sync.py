"""The Binance book sync, sans-I/O: exact decimals, strict decoding, and the sync state
machine held to an independent reference on random streams with drops, duplicates,
reordering, lagging and crossed snapshots and resets (same books, same decisions), and to
the simulator's true book whenever it says it is in sync."""

from __future__ import annotations

import json
import random

import pytest

from shrivenq.binance import decode
from shrivenq.binance.decimal import format_fixed, parse_fixed, scale_of
from shrivenq.binance.reference import ReferenceSync
from shrivenq.binance.sync import FETCH, GAP, SYNCED, BookSync
from shrivenq.books import ASK, BID
from shrivenq.errors import BinanceMessageError, ProtocolError
from shrivenq.sim.binance_market import BinanceMarket, dumps

# --- decimals ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,scale,value", [
    ("64201.01000000", 2, 6420101), ("0.00000000", 8, 0), ("0.00000000", 0, 0),
    ("0", 5, 0), ("1", 0, 1), ("1.", 2, 100), (".5", 1, 5), ("0.00001000", 5, 1),
    ("1E-8", 8, 1), ("1e-8", 10, 100), ("1.5E+3", 0, 1500), ("2.5e2", 1, 2500),
    ("0E-10", 2, 0), ("12345678901.23456789", 8, 1234567890123456789),
    ("9223372036854775807", 0, 2**63 - 1), (b"3.14", 2, 314), ("000123.4500", 2, 12345),
])
def test_decimal_strings_parse_exactly(text, scale, value):
    assert parse_fixed(text, scale) == value


@pytest.mark.parametrize("text,scale,words", [
    ("0.015", 2, "more decimal places"), ("1E-9", 8, "more decimal places"),
    ("9223372036854775808", 0, "int64"), ("1e30", 2, "int64"), ("-1.0", 2, "not a decimal"),
    ("+1", 2, "not a decimal"), ("", 2, "not a decimal"), (" 1", 2, "not a decimal"),
    ("1 ", 2, "not a decimal"), ("nan", 2, "not a decimal"), ("inf", 2, "not a decimal"),
    ("1_000", 0, "not a decimal"), ("0x10", 0, "not a decimal"), ("1.2.3", 2, "not a decimal"),
    ("1e", 2, "not a decimal"), (".", 2, "not a decimal"), ("1" * 70, 0, "characters long"),
    (1.5, 2, "expected a decimal string"), (None, 2, "expected a decimal string"),
    ("１２", 0, "not a decimal"), (b"\xff1", 0, "not ASCII"), ("1e99999", 0, "not a decimal"),
])
def test_unrepresentable_decimals_are_refused_with_the_reason(text, scale, words):
    with pytest.raises(BinanceMessageError, match=words) as info:
        parse_fixed(text, scale, where="BTCUSDT b[0] price")
    assert "BTCUSDT b[0] price" in str(info.value) and isinstance(info.value, ProtocolError)


def test_decimal_round_trip_on_random_values():
    rng = random.Random(5)
    for _ in range(2000):
        scale = rng.randint(0, 12)
        value = rng.randint(0, 2**63 - 1) if rng.random() < 0.5 else rng.randint(0, 10**9)
        text = format_fixed(value, scale, scale + rng.randint(0, 4))
        assert parse_fixed(text, scale) == value
        digits = str(value)
        assert parse_fixed(f"{digits}E-{scale}", scale) == value


@pytest.mark.parametrize("step,scale", [("0.01000000", 2), ("1.00000000", 0), ("10.00000000", 0),
                                        ("0.00001", 5), ("1E-8", 8), ("0.5", 1)])
def test_scale_of_tick_and_step_sizes(step, scale):
    assert scale_of(step) == scale


def test_scale_of_zero_is_refused():
    with pytest.raises(BinanceMessageError, match="zero"):
        scale_of("0.00000000")


# --- decoding ------------------------------------------------------------------------------

SPEC = {"BTCUSDT": decode.SymbolSpec("BTCUSDT", 2, 5, "0.01", "0.00001")}


def depth_msg(**over):
    data = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 10, "u": 12,
            "b": [["100.01000000", "1.00000000"]], "a": [["100.02", "0"]]}
    data.update(over)
    return dumps({"stream": "btcusdt@depth@100ms", "data": data})


def test_a_depth_update_decodes_to_fixed_point():
    stream, data = decode.envelope(depth_msg())
    ev = decode.depth_event(data, SPEC, futures=False)
    assert stream == "btcusdt@depth@100ms"
    assert (ev.first_id, ev.last_id, ev.prev_id) == (10, 12, -1)
    assert ev.bid_prices.tolist() == [10001] and ev.bid_qtys.tolist() == [100000]
    assert ev.ask_prices.tolist() == [10002] and ev.ask_qtys.tolist() == [0]


@pytest.mark.parametrize("raw,words", [
    (b"{not json", "not JSON"), (b"[1,2]", "JSON object"), (b"", "not JSON"),
    (dumps({"stream": 5, "data": {}}), "'stream' must be a string"),
    (depth_msg(U=13, u=12), "U=13 is after u=12"), (depth_msg(U=-1), "'U'"),
    (depth_msg(u="12"), "'u' must be a non-negative integer"), (depth_msg(U=True), "'U'"),
    (depth_msg(b=[["1.001", "1"]]), "b[0] price"), (depth_msg(a=[["1"]]), "a[0]"),
    (depth_msg(a="x"), "BTCUSDT depthUpdate a"), (depth_msg(s="ETHUSDT"), "not subscribed"),
    (depth_msg(e="trade"), "not depthUpdate"), (depth_msg(b=[["1", "-2"]]), "b[0] quantity"),
    (depth_msg(s=None), "'s'"), (depth_msg(E="x"), "'E'"),
])
def test_malformed_depth_updates_are_refused_naming_what_and_where(raw, words):
    with pytest.raises(BinanceMessageError) as info:
        stream, data = decode.envelope(raw)
        decode.depth_event(data, SPEC, futures=False)
    assert words in str(info.value)


def test_futures_updates_need_pu():
    with pytest.raises(BinanceMessageError, match="'pu' is missing"):
        decode.depth_event(decode.envelope(depth_msg())[1], SPEC, futures=True)


def test_snapshot_and_exchange_info_decode_and_refuse_lies():
    market = BinanceMarket(futures=False, seed=3)
    specs = decode.exchange_info(dumps(market.exchange_info()).encode(), ["BTCUSDT", "ETHUSDT"])
    assert (specs["BTCUSDT"].price_scale, specs["BTCUSDT"].qty_scale) == (2, 5)
    snap = decode.snapshot(dumps(market.snapshot("BTCUSDT")).encode(), specs["BTCUSDT"])
    bids, _ = market.books["BTCUSDT"].bids, market.books["BTCUSDT"].asks
    assert sorted(zip(snap.bid_prices.tolist(), snap.bid_qtys.tolist())) == sorted(bids.items())
    with pytest.raises(BinanceMessageError, match="unknown symbol.*NOPEUSDT"):
        decode.exchange_info(dumps(market.exchange_info()), ["NOPEUSDT"])
    with pytest.raises(BinanceMessageError, match="lastUpdateId"):
        decode.snapshot(b'{"bids": [], "asks": []}', specs["BTCUSDT"])
    with pytest.raises(BinanceMessageError, match="BTCUSDT depth snapshot.*not JSON"):
        decode.snapshot(b"<html>502 Bad Gateway</html>", specs["BTCUSDT"])


# --- the sync machine against the reference -----------------------------------------------


def book_levels(book, side):
    return [tuple(r) for r in book.levels(side).tolist()]


def true_levels(state, side):
    bids, asks = state
    return (sorted(bids.items(), reverse=True) if side == BID else sorted(asks.items()))


def run_stream(seed, futures, p_drop=0.0, p_dup=0.0, p_swap=0.0, p_lag=0.0, p_cross=0.0,
               p_reset=0.0, events=400):
    """Drive BookSync and ReferenceSync with one random input sequence; check them against
    each other after every input and against the true book whenever in sync."""
    rng = random.Random(seed)
    market = BinanceMarket(futures=futures, seed=seed, depth=25)
    specs = decode.exchange_info(dumps(market.exchange_info()))
    sym = "ETHUSDT"
    spec, truth = specs[sym], market.books[sym]
    sync, ref = BookSync(sym, futures=futures), ReferenceSync(futures=futures)
    wanted_at = None     # index in the stream at which the asked-for snapshot arrives
    decisions = []
    stats = {"synced_checks": 0, "gaps": 0}

    def feed(kind, item):
        got = (sync.on_event(item) if kind == "event" else sync.on_snapshot(item)
               if kind == "snapshot" else sync.reset(item))
        want = ref.step(kind, item)
        got_t = [(a.kind, a.reason, a.book_id, a.first_id, a.last_id) for a in got]
        assert got_t == want, (kind, got_t, want)
        for a in got:
            assert a.symbol == sym
        decisions.extend(got_t)
        assert book_levels(sync.book, BID) == ref.levels(BID)
        assert book_levels(sync.book, ASK) == ref.levels(ASK)
        assert sync.synced == (ref.update_id is not None)
        if sync.synced:
            assert not sync.book.is_crossed()
            assert (sync.book_id == ref.update_id)
        return got

    outbox, recent = [], []   # outbox: generated, not yet delivered (so it can be swapped)
    i = 0
    for step in range(events + 1):
        if step < events:
            data = market.depth_update(sym)
            if rng.random() < p_cross:   # an exchange bug: a bid at the best ask
                best_ask = min(truth.asks) if truth.asks else truth.mid
                data = dict(data, b=data["b"] + [[format_fixed(best_ask, spec.price_scale),
                                                  "1"]])
            ev = decode.depth_event(json.loads(dumps(data)), specs, futures)
            recent = (recent + [ev])[-5:]
            if rng.random() >= p_drop:
                outbox.append(ev)
            if rng.random() < p_dup:
                outbox.append(ev if rng.random() < 0.5 else rng.choice(recent))
            if len(outbox) > 1 and rng.random() < p_swap:
                outbox[-1], outbox[-2] = outbox[-2], outbox[-1]
            ready, outbox = outbox[:-1], outbox[-1:]
        else:
            ready, outbox = outbox, []
        for ev in ready:
            i += 1
            if rng.random() < p_reset:
                feed("reset", "disconnect")
            actions = feed("event", ev)
            if any(a.kind == FETCH for a in actions):
                wanted_at = i + rng.randint(0, 4)
            if wanted_at is not None and i >= wanted_at:
                wanted_at = None
                # The snapshot is the true book now, or (lagging) some updates ago.
                at = truth.last_id
                if rng.random() < p_lag:
                    at = truth.history[max(0, len(truth.history) - 1 - rng.randint(1, 30))][0]
                body = dumps(market.snapshot(sym, at=at)).encode()
                actions = feed("snapshot", decode.snapshot(body, spec))
                if any(a.kind == FETCH for a in actions):
                    wanted_at = i + 1
            if sync.synced:
                state = truth.book_at(sync.book_id)
                if state is not None and not p_cross:
                    assert book_levels(sync.book, BID) == true_levels(state, BID)
                    assert book_levels(sync.book, ASK) == true_levels(state, ASK)
                    stats["synced_checks"] += 1
    stats["gaps"] = sum(1 for d in decisions if d[0] == GAP)
    stats["decisions"] = decisions
    return stats


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_a_clean_stream_syncs_once_and_matches_the_true_book_after_every_event(futures):
    stats = run_stream(1, futures)
    kinds = [d[0] for d in stats["decisions"]]
    assert kinds[:1] == [FETCH] and kinds.count(SYNCED) == 1 and stats["gaps"] == 0
    assert stats["synced_checks"] > 350


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_duplicates_alone_never_cause_a_gap(futures):
    stats = run_stream(2, futures, p_dup=0.2)
    assert stats["gaps"] == 0 and stats["synced_checks"] > 350


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_a_dropped_event_is_a_gap_then_a_resync_back_to_the_true_book(futures):
    stats = run_stream(3, futures, p_drop=0.01, events=600)
    gaps = [d for d in stats["decisions"] if d[0] == GAP]
    assert gaps and all(g[1] == "sequence" for g in gaps)
    assert sum(d[0] == SYNCED for d in stats["decisions"]) == len(gaps) + 1
    assert stats["synced_checks"] > 300


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_a_crossing_update_is_detected_and_resynced(futures):
    stats = run_stream(4, futures, p_cross=0.01, events=600)
    assert any(d[:2] == (GAP, "crossed") for d in stats["decisions"])


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
@pytest.mark.parametrize("seed", range(12))
def test_random_hostile_streams_agree_with_the_reference(seed, futures):
    run_stream(100 + seed, futures, p_drop=0.02, p_dup=0.05, p_swap=0.03, p_lag=0.3,
               p_cross=0.005 if seed % 3 == 0 else 0.0, p_reset=0.01, events=500)


def test_a_snapshot_older_than_the_stream_is_refetched():
    market = BinanceMarket(seed=9, depth=10)
    specs = decode.exchange_info(dumps(market.exchange_info()))
    spec = specs["BTCUSDT"]
    old = decode.snapshot(dumps(market.snapshot("BTCUSDT")), spec)
    evs = [decode.depth_event(market.depth_update("BTCUSDT"), specs, False) for _ in range(5)]
    sync = BookSync("BTCUSDT")
    assert [a.reason for a in sync.on_event(evs[3])] == ["start"]   # stream began late
    actions = sync.on_snapshot(old)
    assert [(a.kind, a.reason) for a in actions] == [(FETCH, "stale_snapshot")]
    assert not sync.synced
    sync.on_event(evs[4])
    fresh = decode.snapshot(dumps(market.snapshot("BTCUSDT", at=evs[3].last_id)), spec)
    assert [a.kind for a in sync.on_snapshot(fresh)] == [SYNCED]
    assert sync.synced and sync.book_id == evs[4].last_id
    assert sync.on_snapshot(fresh) == ()      # not asked for: ignored
    assert sync.counters.snapshots_ignored == 1


def test_a_snapshot_newer_than_every_buffered_event_waits_for_the_next_event():
    market = BinanceMarket(seed=10, depth=10)
    specs = decode.exchange_info(dumps(market.exchange_info()))
    evs = [decode.depth_event(market.depth_update("BTCUSDT"), specs, False) for _ in range(3)]
    sync = BookSync("BTCUSDT")
    sync.on_event(evs[0])
    snap = decode.snapshot(dumps(market.snapshot("BTCUSDT", at=evs[1].last_id)),
                           specs["BTCUSDT"])
    assert sync.on_snapshot(snap) == () and not sync.synced
    assert [a.kind for a in sync.on_event(evs[2])] == [SYNCED]
    state = market.books["BTCUSDT"].book_at(evs[2].last_id)
    assert book_levels(sync.book, BID) == true_levels(state, BID)


def test_reset_discards_the_book_and_reports_a_gap_only_when_synced():
    market = BinanceMarket(seed=11, depth=10)
    specs = decode.exchange_info(dumps(market.exchange_info()))
    sync = BookSync("BTCUSDT")
    assert sync.reset("disconnect") == ()
    ev = decode.depth_event(market.depth_update("BTCUSDT"), specs, False)
    sync.on_event(ev)
    sync.on_snapshot(decode.snapshot(dumps(market.snapshot("BTCUSDT", at=ev.last_id)),
                                     specs["BTCUSDT"]))
    nxt = decode.depth_event(market.depth_update("BTCUSDT"), specs, False)
    assert [a.kind for a in sync.on_event(nxt)] == [SYNCED] and sync.synced
    assert [(a.kind, a.reason) for a in sync.reset("disconnect")] == [(GAP, "disconnect")]
    assert not sync.synced and sync.book.depth(BID) == 0 and sync.book.depth(ASK) == 0


def test_a_crossed_snapshot_is_refused_and_refetched():
    market = BinanceMarket(seed=12, depth=10)
    specs = decode.exchange_info(dumps(market.exchange_info()))
    ev = decode.depth_event(market.depth_update("BTCUSDT"), specs, False)
    sync = BookSync("BTCUSDT")
    sync.on_event(ev)
    doc = market.snapshot("BTCUSDT", at=market.books["BTCUSDT"].history[0][0])
    doc["bids"].insert(0, [doc["asks"][0][0], "1.00000000"])
    actions = sync.on_snapshot(decode.snapshot(dumps(doc), specs["BTCUSDT"]))
    assert [(a.kind, a.reason) for a in actions] == [(FETCH, "crossed_snapshot")]
    assert not sync.synced and sync.book.depth(BID) == 0


def test_fixed_point_book_survives_levels_bigger_than_float_precision():
    spec = {"X": decode.SymbolSpec("X", 8, 8, "0.00000001", "0.00000001")}
    data = {"e": "depthUpdate", "E": 1, "s": "X", "U": 1, "u": 1,
            "b": [["12345678901.12345678", "90000000000.00000001"]], "a": []}
    ev = decode.depth_event(data, spec, False)
    assert ev.bid_prices[0] == 1234567890112345678 and ev.bid_qtys[0] == 9000000000000000001
    assert int(float(data["b"][0][1]) * 1e8) != int(ev.bid_qtys[0])   # a float could not
