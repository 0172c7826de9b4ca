"""The Kite simulator over real loopback sockets: handshake, subscriptions and modes,
heartbeats, fault injection, exact accounting of what it sent, and the REST calls the SDK
makes. Every server binds 127.0.0.1 on an ephemeral port and is shut down by its test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import numpy as np
import pytest
from kiteconnect import KiteConnect, KiteTicker
from kiteconnect import exceptions as kex
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from shrivenq.errors import KiteFrameError
from shrivenq.kite import (
    KIND_FULL, KIND_INDEX_FULL, KIND_INDEX_QUOTE, KIND_LTP, KIND_QUOTE, parse_frame, parse_ticks,
)
from shrivenq.kite.instruments import InstrumentMaster
from shrivenq.kite import TICK_DTYPE
from shrivenq.kite.wire import encode_frame
from shrivenq.sim.kite_server import (
    DEMO_ACCESS_TOKEN, DEMO_API_KEY, DEMO_API_SECRET, DEMO_REQUEST_TOKEN, HEARTBEAT,
    KiteSimServer, SimThread, encode_frame_fast, malformed_frame, market_round, rows_as_kinds,
    sim_master,
)
from shrivenq.sim.market import KiteMarket, universe_from_instruments

NIFTY, BANKNIFTY, INFY, RELIANCE = 256265, 260105, 408065, 738561
NIFTY_CE = 13318146        # NIFTY25NOV26000CE
NIFTY_FUT = 13312002       # NIFTY25NOVFUT
SDK = KiteTicker.__new__(KiteTicker)


def run(coro, timeout: float = 20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def sub(tokens) -> str:
    return json.dumps({"a": "subscribe", "v": list(tokens)})


def mode(m, tokens) -> str:
    return json.dumps({"a": "mode", "v": [m, list(tokens)]})


async def recv_ticks(ws, until, timeout: float = 5.0) -> list[bytes]:
    """Binary tick frames until ``until(frames)`` holds."""
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not until(frames):
        left = deadline - time.monotonic()
        assert left > 0, "condition not reached"
        msg = await asyncio.wait_for(ws.recv(), left)
        if isinstance(msg, bytes) and len(msg) > 1:
            frames.append(msg)
    return frames


def kinds_by_token(frames) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for f in frames:
        rows = parse_frame(f)
        for t, k in zip(rows["token"].tolist(), rows["kind"].tolist()):
            out.setdefault(t, set()).add(k)
    return out


# --- handshake ------------------------------------------------------------------------------

def test_bad_or_missing_token_is_403_at_the_handshake():
    async def main():
        async with KiteSimServer() as sim:
            root = f"ws://127.0.0.1:{sim.port}"
            for url in (f"{root}?api_key={DEMO_API_KEY}&access_token=wrong",
                        f"{root}?api_key=nope&access_token={DEMO_ACCESS_TOKEN}",
                        f"{root}?api_key={DEMO_API_KEY}", root + "/"):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url):
                        pass
                assert info.value.response.status_code == 403
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"{root}/other?api_key={DEMO_API_KEY}"
                                   f"&access_token={DEMO_ACCESS_TOKEN}"):
                    pass
            assert info.value.response.status_code == 404
            # KiteTicker's URL form (root without a slash, then the query) is accepted
            async with connect(f"{root}?api_key={DEMO_API_KEY}&access_token={DEMO_ACCESS_TOKEN}"):
                pass
            # fault: reject every token, then revoke one
            sim.reject_tokens = True
            with pytest.raises(InvalidStatus):
                async with connect(sim.socket_url()):
                    pass
            sim.reject_tokens = False
            sim.revoke(DEMO_ACCESS_TOKEN)
            with pytest.raises(InvalidStatus):
                async with connect(sim.socket_url()):
                    pass
            assert sim.rejected_handshakes == 6
            assert len(sim.connections) == 1
    run(main())


# --- subscriptions and modes ----------------------------------------------------------------

class Recorder:
    """A client that keeps every message it received, so indices line up with the server's
    ``messages_sent`` counter."""

    def __init__(self, ws):
        self.ws = ws
        self.msgs: list[bytes | str] = []

    async def until(self, cond, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond(self.msgs):
            left = deadline - time.monotonic()
            assert left > 0, "condition not reached"
            self.msgs.append(await asyncio.wait_for(self.ws.recv(), left))

    def ticks(self, start: int = 0) -> list[bytes]:
        return [m for m in self.msgs[start:] if isinstance(m, bytes) and len(m) > 1]


def test_subscribe_mode_unsubscribe_change_the_stream():
    async def main():
        async with KiteSimServer(rate=40, frame_interval=0.02) as sim:
            async with connect(sim.socket_url()) as ws:
                c = Recorder(ws)
                await ws.send(sub([NIFTY, INFY, NIFTY_CE, 999999]))   # 999999: unknown
                await c.until(lambda ms: len(kinds_by_token(c.ticks())) == 3)
                assert kinds_by_token(c.ticks()) == {
                    NIFTY: {KIND_INDEX_QUOTE}, INFY: {KIND_QUOTE}, NIFTY_CE: {KIND_QUOTE}}
                conn = sim.connections[0]

                await ws.send(mode("full", [INFY, NIFTY]))
                await ws.send(mode("ltp", [NIFTY_CE, RELIANCE]))      # RELIANCE: not subscribed
                await sim.wait_until(lambda: conn.stats.messages_received == 3)
                mark = conn.stats.messages_sent + 1   # one frame may have been in flight
                await c.until(lambda ms: len(ms) > mark
                              and len(kinds_by_token(c.ticks(mark))) == 3)
                assert kinds_by_token(c.ticks(mark)) == {
                    NIFTY: {KIND_INDEX_FULL}, INFY: {KIND_FULL}, NIFTY_CE: {KIND_LTP}}
                # a frame mixes packet kinds according to each token's mode
                assert any(len(set(parse_frame(f)["kind"].tolist())) > 1
                           for f in c.ticks(mark))

                await ws.send(json.dumps({"a": "unsubscribe", "v": [INFY, NIFTY_CE]}))
                await sim.wait_until(lambda: conn.stats.messages_received == 4)
                mark = conn.stats.messages_sent + 1
                await c.until(lambda ms: len(c.ticks(mark)) >= 10)
                assert set(kinds_by_token(c.ticks(mark))) == {NIFTY}
                assert conn.subscriptions == {NIFTY: "full", 999999: "quote"}
    run(main())


def test_unknown_tokens_only_get_heartbeats_and_heartbeat_is_one_byte_after_a_second():
    async def main():
        async with KiteSimServer(rate=10) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([123, 456]))
                t0 = time.monotonic()
                first = await asyncio.wait_for(ws.recv(), 3)
                waited = time.monotonic() - t0
                assert first == HEARTBEAT and len(first) == 1
                assert 0.7 < waited < 3.0
    run(main())


def test_heartbeats_only_when_idle():
    async def main():
        async with KiteSimServer(rate=20, heartbeat_interval=0.2) as sim:
            async with connect(sim.socket_url()) as ws:
                idle = [await asyncio.wait_for(ws.recv(), 2) for _ in range(3)]
                assert idle == [HEARTBEAT] * 3
                await ws.send(sub([INFY, RELIANCE]))
                busy = [await asyncio.wait_for(ws.recv(), 2) for _ in range(30)]
                assert busy.count(HEARTBEAT) <= 1      # at most one raced the subscribe
                assert sim.connections[0].stats.heartbeats_sent >= 3
    run(main())


def test_more_than_3000_instruments_is_a_kite_text_error():
    async def main():
        async with KiteSimServer(rate=5) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub(range(1, 2001)))
                await ws.send(sub(range(2001, 3002)))                 # 3001 in all
                msg = await asyncio.wait_for(ws.recv(), 3)
                while isinstance(msg, bytes):
                    msg = await asyncio.wait_for(ws.recv(), 3)
                doc = json.loads(msg)
                assert doc["type"] == "error" and "3000" in doc["data"]
                conn = sim.connections[0]
                assert len(conn.subscriptions) == 2000
                assert conn.stats.errors_sent == 1
                await ws.send("not json")
                await ws.send(json.dumps({"a": "fly", "v": []}))
                texts = []
                while len(texts) < 2:
                    msg = await asyncio.wait_for(ws.recv(), 3)
                    if isinstance(msg, str):
                        texts.append(json.loads(msg))
                assert [t["type"] for t in texts] == ["error", "error"]
    run(main())


# --- the market -----------------------------------------------------------------------------

def test_prices_on_the_tick_grid_and_cumulative_volume():
    universe = universe_from_instruments(InstrumentMaster.sample())
    ticks = {u.token: u.tick for u in universe}
    assert (ticks[NIFTY], ticks[INFY], ticks[NIFTY_CE], ticks[NIFTY_FUT]) == (5, 5, 5, 10)

    async def main():
        async with KiteSimServer(rate=None, max_batch=200) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([NIFTY, INFY, NIFTY_CE, NIFTY_FUT]))
                await ws.send(mode("full", [NIFTY, INFY, NIFTY_CE, NIFTY_FUT]))
                frames = await recv_ticks(ws, lambda fs: sum(len(parse_frame(f)) for f in fs[-3:])
                                          >= 600 and len(fs) >= 5)
        rows = np.concatenate([parse_frame(f) for f in frames[2:]])
        for token, tick in ((NIFTY, 5), (INFY, 5), (NIFTY_CE, 5), (NIFTY_FUT, 10)):
            r = rows[rows["token"] == token]
            assert len(r) > 10
            assert (r["last_price"] % tick == 0).all()
            if token != NIFTY:
                assert (np.diff(r["volume"].astype(np.int64)) >= 0).all()
                assert (r["bid_price"][:, 0] < r["ask_price"][:, 0]).all()
        assert (rows[rows["token"] == NIFTY_FUT]["oi"] > 0).all()
        assert max(len(parse_frame(f)) for f in frames) == 200       # max rate batches
    run(main())


def test_vectorised_round_matches_the_market_and_the_encoder():
    universe = universe_from_instruments(InstrumentMaster.sample())
    market = KiteMarket(universe, seed=3)
    everyone = np.arange(len(universe))
    rng = np.random.default_rng(5)
    for _ in range(20):
        rows = market_round(market, everyone, 1_763_610_400)
        assert sorted(rows["token"].tolist()) == sorted(u.token for u in universe)
        # every row is what KiteMarket's own per-tick fill writes for the same state
        for i in rng.choice(len(universe), 8, replace=False):
            ref = np.zeros(1, dtype=TICK_DTYPE)
            market._fill(ref, int(i), KIND_FULL, 1_763_610_400)
            assert rows[rows["token"] == universe[i].token][0].tobytes() == ref[0].tobytes()
        # frames that mix kinds: the fast encoder gives encode_frame's exact bytes
        modes = rng.integers(0, 3, len(rows))
        kinds = np.where(rows["segment"] == 9, np.array([KIND_LTP, KIND_INDEX_QUOTE,
                                                         KIND_INDEX_FULL])[modes],
                         np.array([KIND_LTP, KIND_QUOTE, KIND_FULL])[modes]).astype(np.uint8)
        mixed = rows_as_kinds(rows, kinds)
        frame = encode_frame_fast(mixed)
        assert frame == encode_frame(mixed)
        assert (parse_frame(frame) == mixed).all()


def test_rate_is_about_one_tick_per_instrument_per_second():
    async def main():
        async with KiteSimServer(record=True) as sim:
            async with connect(sim.socket_url()) as ws:
                tokens = [t for t in InstrumentMaster.sample().tokens][:40]
                await ws.send(sub(tokens))
                end = time.monotonic() + 2.0
                while time.monotonic() < end:                  # keep reading: no backpressure
                    try:
                        await asyncio.wait_for(ws.recv(), end - time.monotonic())
                    except TimeoutError:
                        break
            conn = sim.connections[0]
            assert 50 <= conn.stats.packets_sent <= 110
    run(main())


# --- exact accounting -----------------------------------------------------------------------

def test_counters_and_sent_log_match_what_the_client_received_byte_for_byte():
    async def main():
        async with KiteSimServer(rate=200, record=True, heartbeat_interval=0.3,
                                 frame_interval=0.01) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([NIFTY, BANKNIFTY, INFY, NIFTY_CE]))
                await ws.send(mode("full", [INFY]))
                await ws.send(mode("ltp", [BANKNIFTY]))
                received = []
                for _ in range(50):
                    received.append(await asyncio.wait_for(ws.recv(), 3))
                conn = sim.connections[0]
                sim.send_malformed(conn, "bad_count")
                sim.send_error(conn, "simulated")
                for _ in range(20):
                    received.append(await asyncio.wait_for(ws.recv(), 3))
                sim.stall(conn)
                await asyncio.sleep(0.05)
                while len(received) < conn.stats.messages_sent:
                    received.append(await asyncio.wait_for(ws.recv(), 3))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.4)            # stalled: nothing more
            st = conn.stats
            assert list(conn.sent) == received
            binary = [m for m in received if isinstance(m, bytes)]
            assert conn.sent_binary() == binary
            assert st.messages_sent == len(received)
            assert st.bytes_sent == sum(len(m) for m in received)
            assert st.text_sent == 1 and st.malformed_sent == 1 and st.errors_sent == 1
            ticks = [m for m in binary if len(m) > 1 and m != malformed_frame("bad_count")]
            assert st.frames_sent == len(ticks)
            assert st.packets_sent == sum(len(parse_frame(f)) for f in ticks)
            by_kind: dict[int, int] = {}
            for f in ticks:
                for k in parse_frame(f)["kind"].tolist():
                    by_kind[k] = by_kind.get(k, 0) + 1
            assert st.packets_by_kind == by_kind
            assert set(by_kind) == {KIND_INDEX_QUOTE, KIND_LTP, KIND_FULL, KIND_QUOTE}
    run(main())


def test_kiteconnect_parses_the_simulators_frames():
    async def main():
        async with KiteSimServer(rate=100, frame_interval=0.01) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([NIFTY, BANKNIFTY, INFY, RELIANCE, NIFTY_CE, NIFTY_FUT]))
                await ws.send(mode("full", [NIFTY, INFY, NIFTY_FUT]))
                await ws.send(mode("ltp", [RELIANCE]))
                return await recv_ticks(ws, lambda fs: len(fs) >= 60)
    frames = run(main())
    modes: dict[int, set[str]] = {}
    for frame in frames:
        sdk = SDK._parse_binary(frame)
        assert sdk == parse_ticks(frame)
        for tick in sdk:
            modes.setdefault(tick["instrument_token"], set()).add(tick["mode"])
    late = {t: m for t, m in modes.items()}
    assert late[RELIANCE] >= {"ltp"} and late[NIFTY_FUT] >= {"full"}
    assert {NIFTY, BANKNIFTY, INFY, NIFTY_CE} <= set(modes)


# --- faults ---------------------------------------------------------------------------------

def test_drop_aborts_without_a_close_frame_after_flushing_what_it_counted():
    async def main():
        async with KiteSimServer(rate=200, record=True) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([INFY, NIFTY]))
                received = [await asyncio.wait_for(ws.recv(), 3) for _ in range(10)]
                conn = sim.connections[0]
                sim.drop(conn)
                with pytest.raises(ConnectionClosedError) as info:
                    while True:
                        received.append(await asyncio.wait_for(ws.recv(), 3))
                assert info.value.rcvd is None                 # no close frame: a network drop
                await conn.wait_closed(3)
                assert not conn.open and conn.stats.unflushed_at_drop == 0
                assert received == list(conn.sent)
                # the server keeps serving: reconnect works
                async with connect(sim.socket_url()) as ws2:
                    await ws2.send(sub([INFY]))
                    await recv_ticks(ws2, lambda fs: len(fs) >= 2)
                assert len(sim.connections) == 2
    run(main())


def test_clean_drop_sends_the_close_code():
    async def main():
        async with KiteSimServer(rate=50) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([INFY]))
                await recv_ticks(ws, lambda fs: len(fs) >= 1)
                sim.drop(clean=True, code=1001, reason="going away")
                with pytest.raises(ConnectionClosed) as info:
                    while True:
                        await asyncio.wait_for(ws.recv(), 3)
                assert info.value.rcvd.code == 1001
    run(main())


def test_drop_after_n_messages():
    async def main():
        async with KiteSimServer(rate=300, record=True, drop_after=25, frame_interval=0.01) as sim:
            for _ in range(2):
                async with connect(sim.socket_url()) as ws:
                    await ws.send(sub([INFY, NIFTY_CE]))
                    got = []
                    with pytest.raises(ConnectionClosedError):
                        while True:
                            got.append(await asyncio.wait_for(ws.recv(), 3))
                    assert len(got) == 25
            assert [c.stats.messages_sent for c in sim.connections] == [25, 25]
    run(main())


def test_stall_keeps_the_connection_open_and_silent_then_resume():
    async def main():
        async with KiteSimServer(rate=100, heartbeat_interval=0.1) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([INFY]))
                await recv_ticks(ws, lambda fs: len(fs) >= 2)
                conn = sim.connections[0]
                sim.stall(conn)
                await asyncio.sleep(0.05)
                before = conn.stats.messages_sent
                try:                                           # drain what is in flight
                    while True:
                        await asyncio.wait_for(ws.recv(), 0.1)
                except TimeoutError:
                    pass
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.5)     # no ticks, no heartbeats
                assert conn.stats.messages_sent == before and conn.open
                pong = await ws.ping()
                await asyncio.wait_for(pong, 1)                # still alive at the TCP level
                sim.resume(conn)
                await recv_ticks(ws, lambda fs: len(fs) >= 2, timeout=2)
                # deaf: pings go unanswered too
                sim.stall(conn, deaf=True)
                await asyncio.sleep(0.05)
                pong = await ws.ping()
                done, _ = await asyncio.wait({pong}, timeout=0.5)
                assert not done
                sim.resume(conn)
                await asyncio.wait_for(pong, 2)
    run(main())


@pytest.mark.parametrize("kind", ["truncated", "bad_count", "bad_length", "trailing", "empty"])
def test_malformed_frames_are_sent_between_ticks(kind):
    async def main():
        async with KiteSimServer(rate=100, record=True) as sim:
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([INFY]))
                await recv_ticks(ws, lambda fs: len(fs) >= 1)
                sim.send_malformed(kind=kind)
                bad = None
                for _ in range(200):
                    msg = await asyncio.wait_for(ws.recv(), 3)
                    try:
                        parse_frame(msg)
                    except KiteFrameError:
                        bad = msg
                        break
                assert bad == malformed_frame(kind)
                assert bad in sim.connections[0].sent
                assert sim.connections[0].stats.malformed_sent == 1
                await recv_ticks(ws, lambda fs: len(fs) >= 1)  # and the stream goes on
    run(main())


def test_fault_methods_work_from_another_thread():
    with SimThread(rate=100, record=True) as sim:
        async def client():
            async with connect(sim.socket_url()) as ws:
                await ws.send(sub([INFY]))
                await recv_ticks(ws, lambda fs: len(fs) >= 2)
                await asyncio.to_thread(sim.drop)               # from a foreign thread
                with pytest.raises(ConnectionClosedError):
                    while True:
                        await asyncio.wait_for(ws.recv(), 3)
        run(client())
        assert len(sim.connections) == 1 and sim.connections[0].close_reason.startswith("dropped")


# --- REST -------------------------------------------------------------------------------------

def test_generate_session_and_instruments_through_kiteconnect():
    with SimThread() as sim:
        kite = KiteConnect(DEMO_API_KEY, root=sim.rest_url)
        session = kite.generate_session(DEMO_REQUEST_TOKEN, api_secret=DEMO_API_SECRET)
        assert session["access_token"] == DEMO_ACCESS_TOKEN == kite.access_token
        assert session["user_id"] and session["login_time"].year >= 2025
        instruments = kite.instruments()
        assert len(instruments) == len(InstrumentMaster.sample())
        nifty = next(i for i in instruments if i["instrument_token"] == NIFTY)
        assert nifty["tradingsymbol"] == "NIFTY 50"
        assert {i["exchange"] for i in kite.instruments("NFO")} == {"NFO"}
        assert kite.profile()["user_id"] == session["user_id"]

        # a minted request token is single-use and yields a fresh access token that works
        rt = sim.new_request_token()
        fresh = KiteConnect(DEMO_API_KEY, root=sim.rest_url).generate_session(rt, DEMO_API_SECRET)
        assert fresh["access_token"] != DEMO_ACCESS_TOKEN
        assert KiteConnect(DEMO_API_KEY, fresh["access_token"], root=sim.rest_url).instruments()
        with pytest.raises(kex.TokenException):
            KiteConnect(DEMO_API_KEY, root=sim.rest_url).generate_session(rt, DEMO_API_SECRET)

        with pytest.raises(kex.TokenException, match="checksum"):
            KiteConnect(DEMO_API_KEY, root=sim.rest_url).generate_session(
                DEMO_REQUEST_TOKEN, api_secret="wrong")
        with pytest.raises(kex.TokenException):
            KiteConnect(DEMO_API_KEY, "bad", root=sim.rest_url).instruments()
        with pytest.raises(kex.GeneralException):
            KiteConnect(DEMO_API_KEY, DEMO_ACCESS_TOKEN, root=sim.rest_url).margins()

        # the checksum is Kite's: sha256(api_key + request_token + api_secret)
        import requests
        checksum = hashlib.sha256((DEMO_API_KEY + DEMO_REQUEST_TOKEN + DEMO_API_SECRET)
                                  .encode()).hexdigest()
        r = requests.post(sim.rest_url + "/session/token", data={
            "api_key": DEMO_API_KEY, "request_token": DEMO_REQUEST_TOKEN, "checksum": checksum},
            timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "success"
        r = requests.post(sim.rest_url + "/session/token", data="x" * 10, timeout=5,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400 and r.json()["error_type"] == "InputException"


def test_instrument_count_option_pads_with_synthetic_stocks():
    m = sim_master(3000)
    assert len(m) == 3000 and m.resolve(["NIFTY 50"])[0].token == 256265
    assert len(sim_master(5)) == 5

    async def main():
        async with KiteSimServer(instruments=3000, rate=None, max_batch=1000) as sim:
            async with connect(sim.socket_url(), max_size=None) as ws:
                await ws.send(sub(m.tokens))
                frames = await recv_ticks(ws, lambda fs: len(fs) >= 3)
                assert sum(len(parse_frame(f)) for f in frames) == 3000
    run(main())


# --- kiteconnect's own ticker (Twisted/autobahn) against the simulator ----------------------

_KITE_TICKER_SCRIPT = r'''
import json, os, sys, time
from kiteconnect import KiteTicker
root, api_key, token, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
kws = KiteTicker(api_key, token, root=root, reconnect=False)
seen, errors = {}, []
def on_ticks(ws, ticks):
    for t in ticks:
        seen.setdefault(str(t["instrument_token"]), set()).add(t["mode"])
def on_connect(ws, response):
    ws.subscribe([256265, 408065, 13318146])
    ws.set_mode(ws.MODE_FULL, [408065])
    ws.set_mode(ws.MODE_LTP, [13318146])
kws.on_ticks, kws.on_connect = on_ticks, on_connect
kws.on_error = lambda ws, code, reason: errors.append(str(reason))
kws.connect(threaded=True)
time.sleep(seconds)
print(json.dumps({"seen": {k: sorted(v) for k, v in seen.items()}, "errors": errors}),
      flush=True)
os._exit(0)
'''


def test_kiteconnects_own_ticker_connects_subscribes_and_gets_ticks(tmp_path):
    """KiteTicker, in a child process (Twisted's reactor cannot restart in this one)."""
    import subprocess
    import sys

    script = tmp_path / "ticker.py"
    script.write_text(_KITE_TICKER_SCRIPT)
    with SimThread(rate=20) as sim:
        root = f"ws://127.0.0.1:{sim.port}"          # KiteTicker appends ?api_key=&access_token=

        def ticker(token: str, seconds: str) -> dict:
            out = subprocess.run([sys.executable, str(script), root, DEMO_API_KEY, token,
                                  seconds], capture_output=True, text=True, timeout=30)
            return json.loads(out.stdout.strip().splitlines()[-1])

        good = ticker(DEMO_ACCESS_TOKEN, "2.0")
        assert good["errors"] == []
        seen = good["seen"]
        assert set(seen) == {str(NIFTY), str(INFY), str(NIFTY_CE)}
        # a frame may go out between the subscribe and the mode messages, hence "in"
        assert seen[str(NIFTY)] == ["quote"]
        assert "full" in seen[str(INFY)] and "ltp" in seen[str(NIFTY_CE)]
        assert sim.connections[0].stats.messages_received == 3   # subscribe + two modes
        bad = ticker("wrong-token", "1.0")
        assert bad["seen"] == {} and any("403" in e for e in bad["errors"])
