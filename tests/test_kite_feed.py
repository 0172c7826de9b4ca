"""The Kite feed client over real loopback sockets, against the built-in simulator: nothing it
was sent is lost, it reconnects and re-subscribes, records gaps, and stops on a bad token."""

from __future__ import annotations

import asyncio
import json

import pytest

from shrivenq.errors import AuthError
from shrivenq.kite.feed import FeedEvent, KiteFeed
from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, KiteSimServer

NIFTY, BANKNIFTY = 256265, 260105


class Sink:
    def __init__(self):
        self.messages: dict[int, list] = {}
        self.events: list[FeedEvent] = []

    def on_message(self, conn, message, wall_ns, mono_ns):
        self.messages.setdefault(conn, []).append(message)

    def on_event(self, event):
        self.events.append(event)

    def kinds(self, conn=0):
        return [e.kind for e in self.events if e.conn == conn]

    def binary(self, conn=0):
        return [m for m in self.messages.get(conn, []) if isinstance(m, bytes)]


def feed_for(sim, sink, modes, **kw):
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("backoff_cap", 0.2)
    return KiteFeed(kw.pop("api_key", DEMO_API_KEY), kw.pop("token", DEMO_ACCESS_TOKEN), modes,
                    sink, root=sim.ws_url, **kw)


async def until(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_every_message_the_server_sent_arrives_byte_for_byte_and_stop_unsubscribes():
    async def main():
        async with KiteSimServer(rate=200, record=True, frame_interval=0.01) as sim:
            sink, stop = Sink(), asyncio.Event()
            feed = feed_for(sim, sink, {NIFTY: "full", BANKNIFTY: "ltp"})
            task = asyncio.create_task(feed.run(stop))
            conn = await sim.wait_for_connections(1)
            await until(lambda: len(sink.binary()) >= 20)
            assert conn.subscriptions == {NIFTY: "full", BANKNIFTY: "ltp"}
            stop.set()
            await task
            await conn.wait_closed(5)
            assert sink.binary() == conn.sent_binary()
            assert feed.stats[0].messages == conn.stats.messages_sent
            assert conn.subscriptions == {}  # the client unsubscribed before closing
            assert sink.kinds() == ["connect", "subscribe", "unsubscribe"]
    run(main())


def test_a_rejected_token_ends_the_run_with_a_clear_error_and_no_retries():
    async def main():
        async with KiteSimServer() as sim:
            sink = Sink()
            feed = feed_for(sim, sink, {NIFTY: "full"}, token="expired-token-abcdef")
            with pytest.raises(AuthError, match="HTTP 403.*wrong or expired") as info:
                await feed.run(asyncio.Event())
            assert "expired-token-abcdef" not in str(info.value)
            assert sim.rejected_handshakes == 1
    run(main())


def test_a_dropped_connection_reconnects_resubscribes_and_records_the_gap():
    async def main():
        async with KiteSimServer(rate=200, record=True, frame_interval=0.01) as sim:
            sink, stop = Sink(), asyncio.Event()
            task = asyncio.create_task(feed_for(sim, sink, {NIFTY: "full", 408065: "quote"})
                                       .run(stop))
            first = await sim.wait_for_connections(1)
            await until(lambda: len(sink.binary()) >= 5)
            sim.drop(first)
            await first.wait_closed(5)
            await until(lambda: len(sim.connections) == 2 and sim.connections[1].stats.frames_sent > 3)
            second = sim.connections[1]
            assert second.subscriptions == {NIFTY: "full", 408065: "quote"}
            stop.set()
            await task
            await second.wait_closed(5)
            assert sink.binary() == first.sent_binary() + second.sent_binary()
            kinds = sink.kinds()
            assert kinds[:4] == ["connect", "subscribe", "disconnect", "connect"]
            (gap,) = [e for e in sink.events if e.kind == "gap"]
            assert gap.detail["from_ns"] < gap.detail["to_ns"]
            assert gap.detail["reason"]
    run(main())


def test_the_watchdog_reconnects_a_connection_that_went_silent():
    async def main():
        async with KiteSimServer(rate=50, record=True, frame_interval=0.01) as sim:
            sink, stop = Sink(), asyncio.Event()
            feed = feed_for(sim, sink, {NIFTY: "full"}, watchdog=0.5)
            task = asyncio.create_task(feed.run(stop))
            first = await sim.wait_for_connections(1)
            await until(lambda: len(sink.binary()) >= 3)
            sim.stall(first)  # no ticks, no heartbeats, socket left open
            await until(lambda: any(e.kind == "gap" for e in sink.events), timeout=5)
            assert len(sim.connections) == 2
            (gap,) = [e for e in sink.events if e.kind == "gap"]
            assert "watchdog" in gap.detail["reason"]
            await until(lambda: feed.stats[0].connected and feed.stats[0].messages > len(first.sent))
            stop.set()
            await task
    run(main())


def test_heartbeats_keep_an_idle_subscription_alive():
    async def main():
        async with KiteSimServer(heartbeat_interval=0.1) as sim:
            sink, stop = Sink(), asyncio.Event()
            feed = feed_for(sim, sink, {999_999_99: "full"}, watchdog=0.5)  # never ticks
            task = asyncio.create_task(feed.run(stop))
            await until(lambda: len(sink.binary()) >= 10)
            assert set(sink.binary()) == {b"\x00"}
            assert len(sim.connections) == 1  # the watchdog saw the heartbeats: no reconnect
            stop.set()
            await task
    run(main())


def test_large_subscriptions_are_sharded_across_connections():
    async def main():
        async with KiteSimServer() as sim:
            sink, stop = Sink(), asyncio.Event()
            modes = {NIFTY: "full", **{(10_000 + i) << 8 | 1: "ltp" for i in range(3500)}}
            feed = feed_for(sim, sink, modes)
            task = asyncio.create_task(feed.run(stop))
            await sim.wait_for_connections(2)
            await until(lambda: sum(len(c.subscriptions) for c in sim.connections) == 3501)
            assert sorted(len(c.subscriptions) for c in sim.connections) == [501, 3000]
            assert not any(json.loads(m)["type"] == "error" for c in sim.connections
                           for m in (c.sent or []) if isinstance(m, str))
            stop.set()
            await task
    run(main())


def test_credentials_never_reach_the_logs_even_at_debug(caplog):
    async def main():
        async with KiteSimServer(rate=50) as sim:
            sink, stop = Sink(), asyncio.Event()
            task = asyncio.create_task(feed_for(sim, sink, {NIFTY: "full"}).run(stop))
            await until(lambda: len(sink.binary()) >= 2)
            sim.drop()
            await until(lambda: len(sim.connections) == 2 and len(sink.binary()) >= 4)
            stop.set()
            await task

    # The feed's websockets logger at DEBUG by name: the CLI (run in-process by other tests)
    # sets it to WARNING for its users, and that level would otherwise hide the request line.
    with caplog.at_level("DEBUG", logger="shrivenq.kite.feed.ws"):
        run(main())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /?api_key=***&access_token=***" in text   # the request line was logged...
    assert DEMO_ACCESS_TOKEN not in text and DEMO_API_KEY not in text  # ...without secrets
