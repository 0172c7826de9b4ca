"""The Binance simulator speaks Binance: python-binance's own client works against it
(pointed there by its URL attributes), streams follow the combined-stream rules and paths,
pings want their payload echoed, and request weights are enforced with 429 then 418."""

from __future__ import annotations

import asyncio
import json

import pytest
from binance.exceptions import BinanceAPIException
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shrivenq.binance import decode
from shrivenq.binance.rest import make_client
from shrivenq.sim.binance_market import DEFAULT_SYMBOLS
from shrivenq.sim.binance_server import BinanceSimServer


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_python_binance_reads_exchange_info_and_depth_from_the_simulator(market):
    async def main():
        async with BinanceSimServer(market=market, interval=0.01) as sim:
            client = make_client(market, sim.rest_url)
            get_info = client.get_exchange_info if market == "spot" else client.futures_exchange_info
            get_book = client.get_order_book if market == "spot" else client.futures_order_book
            info = await asyncio.to_thread(get_info)
            book = await asyncio.to_thread(get_book, symbol="BTCUSDT", limit=1000)
            assert client.response.headers["X-MBX-USED-WEIGHT-1M"]
            specs = decode.exchange_info(json.dumps(info), ["BTCUSDT"])
            snap = decode.snapshot(client.response.content, specs["BTCUSDT"])
            truth = sim.books["BTCUSDT"].book_at(snap.last_update_id)
            assert sorted(zip(snap.bid_prices.tolist(), snap.bid_qtys.tolist()),
                          reverse=True) == sorted(truth[0].items(), reverse=True)
            assert book["lastUpdateId"] == snap.last_update_id
            with pytest.raises(BinanceAPIException) as info_:
                await asyncio.to_thread(get_book, symbol="NOPEUSDT", limit=1000)
            assert info_.value.status_code == 400 and info_.value.code == -1121
            ping = client.ping if market == "spot" else client.futures_ping
            assert await asyncio.to_thread(ping) == {}
    run(main())


def test_weight_limit_gives_429_with_retry_after_then_418_to_a_client_that_ignores_it():
    async def main():
        async with BinanceSimServer(weight_limit=120, weight_window=30) as sim:
            client = make_client("spot", sim.rest_url)
            statuses = []
            for _ in range(5):
                try:
                    await asyncio.to_thread(client.get_order_book, symbol="BTCUSDT", limit=1000)
                    statuses.append(200)
                except BinanceAPIException as exc:
                    statuses.append(exc.status_code)
                    assert int(exc.response.headers["Retry-After"]) >= 1
            assert statuses == [200, 200, 429, 418, 418]
            assert sim.banned == 2
    run(main())


def test_streams_paths_limits_and_silence_on_the_wrong_path():
    async def main():
        async with BinanceSimServer(market="usdm", interval=0.01) as sim:
            url = sim.ws_url
            with pytest.raises(InvalidStatus) as info:
                await connect(f"{url}/stream?streams=btcusdt@trade")   # spot path on usdm
            assert info.value.response.status_code == 404
            many = "/".join(f"btcusdt@depth@{i}ms" for i in range(1025))
            with pytest.raises(InvalidStatus):
                await connect(f"{url}/public/stream?streams={many}")
            with pytest.raises(InvalidStatus):
                await connect(f"{url}/public/stream?streams=nopeusdt@trade")
            # trades under /public: accepted, and silent; depth there: flows.
            async with connect(f"{url}/public/stream?streams=btcusdt@trade/"
                               "btcusdt@depth@100ms") as ws:
                got = [json.loads(await ws.recv()) for _ in range(20)]
            assert {m["stream"] for m in got} == {"btcusdt@depth@100ms"}
            assert all(m["data"]["e"] == "depthUpdate" and "pu" in m["data"] for m in got)
            async with connect(f"{url}/market/stream?streams=ethusdt@trade") as ws:
                m = json.loads(await ws.recv())
            assert m["stream"] == "ethusdt@trade" and m["data"]["s"] == "ETHUSDT"
    run(main())


def test_server_pings_need_their_payload_echoed():
    async def main():
        async with BinanceSimServer(ping_interval=0.05, pong_timeout=0.5) as sim:
            async with connect(f"{sim.ws_url}/stream?streams=btcusdt@bookTicker") as ws:
                await asyncio.sleep(0.4)
                conn = sim.connections[0]
                assert conn.stats.pings >= 3 and conn.stats.pongs >= conn.stats.pings - 1
            # A client that never reads never answers: the server gives up on it.
            ws = await connect(f"{sim.ws_url}/stream?streams=btcusdt@depth@100ms",
                               ping_interval=None)
            ws.transport.pause_reading()
            await asyncio.sleep(1.0)
            assert sim.connections[1].close_reason == "pong timeout"
            ws.transport.abort()
    run(main())


def test_faults_lose_duplicate_and_swap_depth_events_and_announce_shutdown():
    async def main():
        async with BinanceSimServer(interval=0.01, symbols=DEFAULT_SYMBOLS[:1]) as sim:
            async with connect(f"{sim.ws_url}/stream?streams=btcusdt@depth@100ms") as ws:
                seq = []

                async def ids(n):   # the next n (U, u), after the last one read before
                    start = len(seq)
                    for _ in range(n):
                        d = json.loads(await ws.recv())["data"]
                        seq.append((d["U"], d["u"]))
                    return seq[max(0, start - 1):]

                def breaks(part):
                    return sum(1 for x, y in zip(part, part[1:]) if y[0] != x[1] + 1)

                assert breaks(await ids(5)) == 0
                sim.lose_events(1)
                assert breaks(await ids(10)) == 1
                sim.duplicate_events(1)
                dup = await ids(10)
                assert any(x == y for x, y in zip(dup, dup[1:]))
                sim.swap_events(1)
                swapped = await ids(10)
                assert any(y[0] < x[0] for x, y in zip(swapped, swapped[1:]))
                sim.shutdown(grace=0.2)
                seen = []
                with pytest.raises(ConnectionClosed):
                    while True:
                        seen.append(json.loads(await ws.recv()))
                assert any(m.get("e") == "serverShutdown" for m in seen)
                assert ws.close_code == 1001
            assert sim.lost_events == 1
    run(main())


def test_run_binance_sim_refuses_a_bad_market_and_a_busy_port():
    import socket

    from shrivenq.errors import ConfigError
    from shrivenq.sim.binance_server import run_binance_sim

    with pytest.raises(ConfigError, match="--market"):
        run_binance_sim(market="coinm")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            run_binance_sim(port=port, rest_port=0)
