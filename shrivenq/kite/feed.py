"""The Kite ticker over asyncio and the ``websockets`` library: a thin transport.

It connects (one connection per shard of at most 3000 instruments), subscribes, hands every
message to a sink the moment it arrives (bytes untouched, with wall and monotonic receive
times), and keeps the connection alive: reconnect with jittered exponential backoff on any
drop, a watchdog that reconnects when nothing (not even the 1-byte heartbeat) arrived for
``watchdog`` seconds, re-subscription with the same modes, and a gap event for every span
in which the feed could not have been received. A 403 at the handshake means the access
token is wrong or expired: that ends the run with AuthError instead of retrying forever.

The same code path serves the real exchange and the built-in simulator; only ``root``
differs. Credentials never reach a log line or an error: URLs are logged redacted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from shrivenq.backoff import Backoff
from shrivenq.errors import AuthError, ConfigError
from shrivenq.kite.protocol import (
    DEFAULT_ROOT, feed_url, redacted, shard, subscription_messages, unsubscribe_message,
)

log = logging.getLogger("shrivenq.kite.feed")


class _RedactCredentials(logging.Filter):
    """websockets logs the request line at DEBUG, and Kite's credentials are in its query."""

    _SECRET = re.compile(r"(access_token|api_key)=[^&\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "access_token" in text or "api_key" in text:
            record.msg, record.args = self._SECRET.sub(r"\1=***", text), ()
        return True


#: The logger handed to websockets for our connections.
ws_log = logging.getLogger("shrivenq.kite.feed.ws")
ws_log.addFilter(_RedactCredentials())

#: Kite frames can hold up to 65535 packets; 16 MiB is above the largest possible frame.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class FeedEvent:
    """Something that happened to a connection, for the WAL's control records.

    kind is one of: connect, subscribe, disconnect, gap, unsubscribe.
    detail: connect {"attempt"}, subscribe {"modes": {mode: [tokens]}}, disconnect
    {"reason"}, gap {"from_ns", "to_ns", "reason"} (wall clock ns), unsubscribe {"tokens"}.
    """

    kind: str
    conn: int
    wall_ns: int
    mono_ns: int
    detail: dict[str, Any] = field(default_factory=dict)


class FeedSink(Protocol):
    def on_message(self, conn: int, message: bytes | str, wall_ns: int, mono_ns: int) -> None:
        """Called on the event loop for every message, before anything else looks at it."""

    def on_event(self, event: FeedEvent) -> None:
        """Called for connection events (see FeedEvent)."""


@dataclass
class ConnectionStats:
    conn: int
    instruments: int
    connected: bool = False
    messages: int = 0
    bytes: int = 0
    connects: int = 0
    gaps: int = 0
    last_message_wall_ns: int = 0
    last_message_mono_ns: int = 0


class _Stale(Exception):
    """The watchdog saw no message for too long."""


def _stale(guard: asyncio.Task) -> bool:
    """Whether the watchdog task closed the socket because the feed went silent."""
    return (guard.done() and not guard.cancelled() and guard.exception() is None
            and guard.result() == "stale")


class KiteFeed:
    """Run with ``await feed.run(stop)``; set ``stop`` to unsubscribe and close cleanly."""

    def __init__(self, api_key: str, access_token: str, token_modes: dict[int, str],
                 sink: FeedSink, *, root: str = DEFAULT_ROOT, watchdog: float = 5.0,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 connect_timeout: float = 10.0):
        if watchdog <= 0:
            raise ConfigError(f"watchdog must be positive seconds, not {watchdog}")
        self.shards = shard(token_modes)
        self.url = feed_url(root, api_key, access_token)
        self.sink = sink
        self.watchdog = watchdog
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.connect_timeout = connect_timeout
        self.stats = [ConnectionStats(conn=i, instruments=len(s)) for i, s in
                      enumerate(self.shards)]
        self._last_wall = 0

    def now(self) -> tuple[int, int]:
        """(wall ns, monotonic ns) of a receive. Wall time never goes backwards within a feed
        (an NTP step would otherwise reorder a session's records in time); the monotonic
        reading is kept as it is."""
        wall = time.time_ns()
        if wall < self._last_wall:
            wall = self._last_wall
        self._last_wall = wall
        return wall, time.monotonic_ns()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._run_connection(i, s, stop), name=f"kite-conn-{i}")
                 for i, s in enumerate(self.shards)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise AuthError and friends
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _event(self, kind: str, conn: int, **detail: Any) -> None:
        wall, mono = self.now()
        self.sink.on_event(FeedEvent(kind, conn, wall, mono, detail))

    async def _run_connection(self, conn: int, token_modes: dict[int, str],
                              stop: asyncio.Event) -> None:
        stats = self.stats[conn]
        backoff = Backoff(self.backoff_base, self.backoff_cap)
        down_since: int | None = None   # wall ns from which the feed was not received
        down_reason = ""
        while not stop.is_set():
            reason = "closed"
            try:
                async with connect(self.url, max_size=MAX_MESSAGE_BYTES, ping_interval=None,
                                   open_timeout=self.connect_timeout, close_timeout=2,
                                   compression=None, logger=ws_log) as ws:
                    stats.connects += 1
                    stats.connected = True
                    # The URL without its query: the credentials never reach the WAL.
                    self._event("connect", conn, attempt=stats.connects,
                                url=redacted(self.url))
                    for message in subscription_messages(token_modes):
                        await ws.send(message)
                    modes: dict[str, list[int]] = {}
                    for token, mode in token_modes.items():
                        modes.setdefault(mode, []).append(token)
                    self._event("subscribe", conn, modes=modes)
                    if down_since is not None:
                        wall, _ = self.now()
                        stats.gaps += 1
                        self._event("gap", conn, from_ns=down_since, to_ns=wall,
                                    reason=down_reason)
                        down_since = None
                    reason = await self._receive(conn, ws, token_modes, stop, backoff)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 403:
                    raise AuthError(
                        "Kite refused the WebSocket handshake with HTTP 403: the access token "
                        "is wrong or expired. Run `shrivenq auth login` for a new one.") from None
                reason = f"handshake refused with HTTP {status}"
            except InvalidURI:
                raise ConfigError(f"bad Kite feed URL {redacted(self.url)!r}") from None
            except _Stale:
                reason = f"no message for {self.watchdog:g}s (watchdog)"
            except (OSError, asyncio.TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            finally:
                if stats.connected:
                    stats.connected = False
            if stop.is_set():
                break
            if down_since is None:
                down_since = stats.last_message_wall_ns or self.now()[0]
                down_reason = reason
            self._event("disconnect", conn, reason=reason)
            delay = backoff.next_delay()
            log.warning("kite connection %d to %s lost (%s); reconnecting in %.2fs", conn,
                        redacted(self.url), reason, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _receive(self, conn: int, ws: ClientConnection, token_modes: dict[int, str],
                       stop: asyncio.Event, backoff: Backoff) -> str:
        stats = self.stats[conn]
        stats.last_message_mono_ns = time.monotonic_ns()
        guard = asyncio.create_task(self._guard(conn, ws, token_modes, stop))
        on_message, now = self.sink.on_message, self.now
        first = True
        try:
            async for message in ws:
                wall, mono = now()
                on_message(conn, message, wall, mono)   # the WAL first, bookkeeping after
                stats.last_message_wall_ns = wall
                stats.last_message_mono_ns = mono
                stats.messages += 1
                stats.bytes += len(message)
                if first:
                    backoff.reset()  # only a connection that delivers counts as healthy
                    first = False
        except ConnectionClosed:
            if not _stale(guard):
                raise
        finally:
            stale = _stale(guard)
            guard.cancel()
            try:
                await guard
            except (asyncio.CancelledError, ConnectionClosed):
                pass
        if stale:
            raise _Stale()
        return f"closed by server (code {ws.close_code}, {ws.close_reason or 'no reason'})"

    async def _guard(self, conn: int, ws: ClientConnection, token_modes: dict[int, str],
                     stop: asyncio.Event) -> str:
        """Watchdog and clean stop for one connection; returns why it closed the socket."""
        stats = self.stats[conn]
        tick = min(self.watchdog / 4, 0.25)
        while True:
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except asyncio.TimeoutError:
                silent = (time.monotonic_ns() - stats.last_message_mono_ns) / 1e9
                if silent > self.watchdog:
                    ws.transport.abort()  # a stalled peer may never answer a close handshake
                    return "stale"
                continue
            try:
                if token_modes:
                    await ws.send(unsubscribe_message(list(token_modes)))
                    self._event("unsubscribe", conn, tokens=list(token_modes))
                await ws.close()
            except ConnectionClosed:
                pass
            return "stop"
