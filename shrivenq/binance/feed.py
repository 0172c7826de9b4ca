"""Binance combined streams over asyncio and the ``websockets`` library: a thin transport.

One task per planned connection (``streams.plan``: at most 1024 streams each; USD-M depth
and trades on separate paths). Every message goes to the sink the moment it arrives, as
received (text), with wall and monotonic receive times. The library answers the server's
pings with pongs echoing their payload; the client pings too, so a dead TCP connection is
noticed, and a watchdog reconnects when no message arrived for ``watchdog`` seconds. A
connection of trade streams only (USD-M's ``/market``) may be silent for longer on a quiet
contract: when it is, the watchdog pings it first and reconnects only if no pong comes back.
Depth and bookTicker streams flow whenever the book moves, so their silence is a stall.

Binance ends every connection after 24 hours and announces maintenance with a
``serverShutdown`` event. Both are handled make-before-break: a second connection to the
same streams is opened, its messages are held, the old one is closed gracefully and read to
its end, then the held messages are delivered and the new connection takes over. Nothing
the old connection received is lost, the order within each connection is kept, and the
overlap shows up as duplicate depth events, which the book sync ignores (``u <= id``).

Every physical connection gets a new connection id. Events for the WAL's control records:
``connect`` {url, shard}, ``disconnect`` {reason, shard, handover}, ``gap`` {from_ns,
to_ns, reason, shard}: a span in which no connection of that shard was up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from shrivenq.backoff import Backoff
from shrivenq.binance.streams import ConnectionPlan, stream_url
from shrivenq.errors import ConfigError

log = logging.getLogger("shrivenq.binance.feed")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DAY_LIMIT = 24 * 3600.0
DEFAULT_MAX_AGE = DAY_LIMIT - 10 * 60   # reconnect 10 minutes before Binance's 24 h cut


@dataclass(frozen=True)
class FeedEvent:
    kind: str            # connect, disconnect, gap
    conn: int
    wall_ns: int
    mono_ns: int
    detail: dict[str, Any] = field(default_factory=dict)


class FeedSink(Protocol):
    def on_message(self, conn: int, message: str | bytes, wall_ns: int, mono_ns: int) -> None: ...

    def on_event(self, event: FeedEvent) -> None: ...


@dataclass
class ShardStats:
    shard: int
    url: str
    streams: int
    conn: int = -1
    connected: bool = False
    messages: int = 0
    bytes: int = 0
    connects: int = 0
    handovers: int = 0
    gaps: int = 0
    last_message_wall_ns: int = 0


def _now() -> tuple[int, int]:
    return time.time_ns(), time.monotonic_ns()


class _Link:
    """One physical connection and its reader. Messages go to the sink, or into ``held``
    while a handover waits for the previous connection to finish."""

    def __init__(self, feed: "BinanceFeed", shard: int, ws: ClientConnection, conn: int,
                 hold: bool):
        self.feed, self.shard, self.ws, self.conn = feed, shard, ws, conn
        self.held: list | None = [] if hold else None
        self.opened = time.monotonic()
        self.last_mono = time.monotonic_ns()
        self.delivered = False
        self.shutdown_seen = asyncio.Event()
        self.reader = asyncio.create_task(self._read(), name=f"binance-conn-{conn}")

    async def _read(self) -> None:
        stats = self.feed.stats[self.shard]
        sink = self.feed.sink
        conn = self.conn
        async for message in self.ws:
            wall, mono = time.time_ns(), time.monotonic_ns()
            self.last_mono = mono
            self.delivered = True
            stats.messages += 1
            stats.bytes += len(message)
            stats.last_message_wall_ns = wall
            if "serverShutdown" in message[:80]:
                self.shutdown_seen.set()
            if self.held is None:
                sink.on_message(conn, message, wall, mono)
            else:
                self.held.append((message, wall, mono))

    def release(self) -> None:
        """Deliver what was held, then go live (no await in between: order is kept)."""
        held, self.held = self.held or [], None
        sink = self.feed.sink
        for message, wall, mono in held:
            sink.on_message(self.conn, message, wall, mono)

    async def close(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), timeout)
        except (TimeoutError, ConnectionClosed, OSError):
            self.ws.transport.abort()
        try:
            await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        except (TimeoutError, ConnectionClosed, OSError, asyncio.CancelledError):
            self.reader.cancel()

    def close_reason(self) -> str:
        exc = None if not self.reader.done() or self.reader.cancelled() else self.reader.exception()
        if exc is not None:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return f"closed by server (code {self.ws.close_code}, {self.ws.close_reason or 'no reason'})"


class BinanceFeed:
    """Run with ``await feed.run(stop)``; set ``stop`` to close every connection cleanly."""

    def __init__(self, plans: list[ConnectionPlan], sink: FeedSink, *, root: str,
                 watchdog: float = 30.0, max_age: float = DEFAULT_MAX_AGE,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 connect_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 ping_timeout: float | None = 20.0):
        if watchdog <= 0:
            raise ConfigError(f"watchdog must be positive seconds, not {watchdog}")
        if not 0 < max_age <= DAY_LIMIT:
            raise ConfigError(f"max_age must be in (0, 24h], not {max_age}")
        self.plans = plans
        self.urls = [stream_url(root, p) for p in plans]
        self.sink = sink
        self.watchdog, self.max_age = watchdog, max_age
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.connect_timeout = connect_timeout
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.stats = [ShardStats(i, u, len(p.streams)) for i, (u, p) in
                      enumerate(zip(self.urls, plans))]
        # Shards whose silence may just be a quiet market (see the module docstring).
        self._may_be_quiet = [all("@depth" not in st and "@bookTicker" not in st
                                  for st in p.streams) for p in plans]
        self._ids = itertools.count(1)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._run_shard(i, stop), name=f"binance-shard-{i}")
                 for i in range(len(self.plans))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _event(self, kind: str, conn: int, **detail: Any) -> None:
        wall, mono = _now()
        self.sink.on_event(FeedEvent(kind, conn, wall, mono, detail))

    async def _open(self, shard: int, hold: bool) -> _Link:
        url = self.urls[shard]
        try:
            ws = await connect(url, max_size=MAX_MESSAGE_BYTES, compression=None,
                               open_timeout=self.connect_timeout, close_timeout=2,
                               ping_interval=self.ping_interval, ping_timeout=self.ping_timeout)
        except InvalidURI:
            raise ConfigError(f"bad Binance stream URL {url[:120]!r}") from None
        link = _Link(self, shard, ws, next(self._ids), hold)
        st = self.stats[shard]
        st.connects += 1
        st.conn, st.connected = link.conn, True
        self._event("connect", link.conn, url=url, shard=shard)
        return link

    async def _watch(self, link: _Link, stop: asyncio.Event) -> str:
        """Until something needs doing: 'stop', 'closed', 'stale', 'shutdown' or 'age'."""
        tick = min(self.watchdog / 4, 0.25)
        while True:
            if stop.is_set():
                return "stop"
            if link.reader.done():
                return "closed"
            if link.shutdown_seen.is_set():
                return "shutdown"
            if time.monotonic() - link.opened >= self.max_age:
                return "age"
            if (time.monotonic_ns() - link.last_mono) / 1e9 > self.watchdog:
                if not (self._may_be_quiet[link.shard] and await self._answers_ping(link)):
                    return "stale"
                link.last_mono = time.monotonic_ns()   # quiet, not dead: nothing was missed
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(
                link.shutdown_seen.wait())]
            try:
                await asyncio.wait([link.reader, *waiters], timeout=tick,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _answers_ping(self, link: _Link) -> bool:
        try:
            pong = await link.ws.ping()
            await asyncio.wait_for(pong, timeout=min(self.watchdog, 10.0))
            return True
        except (ConnectionClosed, OSError, asyncio.TimeoutError, RuntimeError):
            return False

    async def _run_shard(self, shard: int, stop: asyncio.Event) -> None:
        st = self.stats[shard]
        backoff = Backoff(self.backoff_base, self.backoff_cap)
        link: _Link | None = None
        down_since: int | None = None
        down_reason = ""
        try:
            while not stop.is_set():
                if link is None:
                    try:
                        link = await self._open(shard, hold=False)
                    except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                        reason = _why(exc)
                        if down_since is None:
                            down_since, down_reason = st.last_message_wall_ns or time.time_ns(), reason
                        delay = backoff.next_delay()
                        log.warning("binance connection %d: cannot connect (%s); retry in %.2fs",
                                    shard, reason, delay)
                        await _sleep(stop, delay)
                        continue
                    if down_since is not None:
                        st.gaps += 1
                        self._event("gap", link.conn, from_ns=down_since, to_ns=time.time_ns(),
                                    reason=down_reason, shard=shard)
                        down_since = None
                what = await self._watch(link, stop)
                if what == "stop":
                    await link.close()
                    st.connected = False
                    self._event("disconnect", link.conn, reason="stopped", shard=shard,
                                handover=False)
                    link = None
                    break
                if what in ("shutdown", "age"):
                    why = "serverShutdown" if what == "shutdown" else f"{self.max_age:g}s age limit"
                    try:
                        new = await self._open(shard, hold=True)
                    except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                        log.warning("binance connection %d: handover after %s failed (%s); "
                                    "keeping the old connection", shard, why, _why(exc))
                        link.shutdown_seen.clear()   # try again as an "age" handover
                        link.opened = time.monotonic() - self.max_age + backoff.next_delay()
                        continue
                    old, link = link, new
                    await old.close()
                    st.handovers += 1
                    self._event("disconnect", old.conn, reason=f"handover: {why}", shard=shard,
                                handover=True)
                    new.release()
                    backoff.reset()
                    log.info("binance connection %d: handed over from %d to %d (%s)", shard,
                             old.conn, new.conn, why)
                    continue
                # closed or stale: a real interruption
                if what == "stale":
                    reason = f"no message for {self.watchdog:g}s (watchdog)"
                    link.ws.transport.abort()
                    link.reader.cancel()
                    await asyncio.gather(link.reader, return_exceptions=True)
                else:
                    await asyncio.gather(link.reader, return_exceptions=True)
                    exc = None if link.reader.cancelled() else link.reader.exception()
                    if exc is not None and not isinstance(
                            exc, (ConnectionClosed, OSError, asyncio.TimeoutError)):
                        raise exc   # the sink failed (a full disk): not the network's fault
                    reason = link.close_reason()
                if link.delivered:
                    backoff.reset()   # only a connection that delivered counts as healthy
                st.connected = False
                self._event("disconnect", link.conn, reason=reason, shard=shard, handover=False)
                down_since, down_reason = st.last_message_wall_ns or time.time_ns(), reason
                link = None
                delay = backoff.next_delay()
                log.warning("binance connection %d lost (%s); reconnecting in %.2fs", shard,
                            reason, delay)
                await _sleep(stop, delay)
        finally:
            if link is not None:
                link.reader.cancel()
                link.ws.transport.abort()
            st.connected = False


def _why(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"handshake refused with HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _sleep(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except asyncio.TimeoutError:
        pass
