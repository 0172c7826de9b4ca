"""Binance session rules, sans-I/O: connection plans within Binance's limits and paths,
URLs, and the REST weight pacer that keeps a resync storm from getting the IP banned."""

from __future__ import annotations

import pytest

from shrivenq.binance.rest import WeightPacer, check_limit, depth_weight
from shrivenq.binance.streams import (
    depth_symbols_of_url, plan, stream_url, streams_of_url)
from shrivenq.errors import ConfigError


def test_spot_plan_puts_all_three_streams_on_one_path_in_lower_case():
    (conn,) = plan(["BTCUSDT", "ethusdt"], "spot")
    assert conn.path == "/stream"
    assert conn.streams == ("btcusdt@depth@100ms", "btcusdt@trade", "btcusdt@bookTicker",
                            "ethusdt@depth@100ms", "ethusdt@trade", "ethusdt@bookTicker")
    url = stream_url("wss://stream.binance.com:9443", conn)
    assert url.startswith("wss://stream.binance.com:9443/stream?streams=btcusdt@depth@100ms/")
    assert streams_of_url(url) == list(conn.streams)
    assert depth_symbols_of_url(url) == {"BTCUSDT", "ETHUSDT"}


def test_usdm_plan_separates_public_depth_from_market_trades():
    conns = plan(["BTCUSDT"], "usdm")
    assert [(c.path, c.streams) for c in conns] == [
        ("/public/stream", ("btcusdt@depth@100ms", "btcusdt@bookTicker")),
        ("/market/stream", ("btcusdt@trade",))]
    assert depth_symbols_of_url(stream_url("wss://fstream.binance.com", conns[1])) == set()


def test_no_connection_exceeds_1024_streams_and_a_symbol_never_straddles_two():
    symbols = [f"SYM{i:04d}USDT" for i in range(700)]
    conns = plan(symbols, "spot")
    assert all(len(c.streams) <= 1024 for c in conns) and len(conns) == 3
    for c in conns:
        assert len(c.streams) % 3 == 0
    assert sum(len(c.streams) for c in conns) == 2100


@pytest.mark.parametrize("symbols,market,words", [
    (["BTC-USDT"], "spot", "not a Binance symbol"), ([], "spot", "nothing to capture"),
    (["BTCUSDT"], "coinm", "--market")])
def test_bad_plans_are_config_errors(symbols, market, words):
    with pytest.raises(ConfigError, match=words):
        plan(symbols, market)


def test_snapshot_limits_and_weights_are_binances():
    assert [depth_weight("spot", n) for n in (100, 500, 1000, 5000)] == [5, 25, 50, 250]
    assert [depth_weight("usdm", n) for n in (50, 100, 500, 1000)] == [2, 5, 10, 20]
    assert check_limit("usdm", 1000) == 1000
    with pytest.raises(ConfigError, match="not allowed on usdm"):
        check_limit("usdm", 999)


def test_pacer_spreads_a_burst_over_the_window_instead_of_exceeding_the_budget():
    pacer = WeightPacer(6000, share=0.5, window=60.0)   # budget 3000 per minute
    now, sent = 0.0, []
    for _ in range(100):                                 # 100 snapshots of weight 50
        wait = pacer.delay(50, now)
        now += wait
        pacer.sent(50, now)
        sent.append(now)
    for i, t in enumerate(sent):                         # never more than 3000 in any minute
        assert sum(50 for u in sent[:i + 1] if u > t - 60.0) <= 3000
    assert sent[59] == 0.0 and sent[60] == pytest.approx(60.0)


def test_pacer_obeys_retry_after_and_backs_off_harder_on_repeats():
    pacer = WeightPacer(6000)
    pacer.on_response(429, {"Retry-After": "7"}, now=100.0)
    assert pacer.delay(50, 100.0) == pytest.approx(7.0)
    pacer.on_response(418, {"Retry-After": "120"}, now=101.0)
    assert pacer.delay(50, 101.0) == pytest.approx(120.0) and pacer.banned == 1
    pacer.on_response(429, {}, now=300.0)                # third strike, no header: 4 s
    assert pacer.delay(50, 300.0) == pytest.approx(4.0)
    pacer.on_response(200, {"X-MBX-USED-WEIGHT-1M": "10"}, now=400.0)
    assert pacer.strikes == 0 and pacer.delay(50, 400.0) == 0.0


def test_pacer_waits_when_the_server_says_the_ip_is_near_its_limit():
    pacer = WeightPacer(6000, share=0.5)
    pacer.on_response(200, {"X-MBX-USED-WEIGHT-1M": "3100"}, now=0.0)   # others use it too
    assert pacer.delay(50, 0.0) > 0
