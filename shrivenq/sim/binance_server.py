"""A Binance simulator on loopback: REST (depth snapshot, exchangeInfo, ping, time) and the
combined market streams, from an internal market (``shrivenq.sim.binance_market``).

WebSocket (``ws://127.0.0.1:PORT``)
    Spot: ``/stream?streams=btcusdt@depth@100ms/btcusdt@trade/btcusdt@bookTicker``.
    USD-M (``market="usdm"``): depth and bookTicker under ``/public/stream``, trades under
    ``/market/stream``; a stream asked for on the wrong path is accepted and stays silent,
    as Binance's. Any other path is 404; more than ``max_streams`` (1024) streams, a stream
    name that is not ``<symbol>@depth[@100ms|@250ms|@500ms]``, ``@trade`` or ``@bookTicker``,
    or an unknown symbol is 400. Messages are the combined-stream envelope
    ``{"stream": ..., "data": ...}``. The server pings every ``ping_interval`` seconds with a
    random payload and closes the connection (1008) when the pong does not echo it within
    ``pong_timeout``; ``max_age`` closes connections that old (Binance: 24 h).

REST (``http://127.0.0.1:REST_PORT``; python-binance pointed here by its URL attributes)
    Spot ``/api/v3/{ping,time,exchangeInfo,depth}``, USD-M ``/fapi/v1/{ping,time,
    exchangeInfo,depth}``. Every reply carries ``X-MBX-USED-WEIGHT-1M``; request weights are
    Binance's (spot depth 5/25/50/250 by limit, USD-M 2/5/10/20); past ``weight_limit`` in
    a ``weight_window`` the reply is 429 with ``Retry-After``, and a client that keeps
    going while told to wait is banned: 418 with ``Retry-After`` (``banned`` counts them).

The market moves every ``interval`` seconds: one depthUpdate per symbol, and a trade and a
bookTicker every ``trade_every`` steps. Every connection subscribed to a stream gets the same
bytes at the same step, so a client's book can be checked against ``market.books[sym]``.

Fault injection (``fault_*``/``drop``/... methods; call them on the server's loop, or through
``SimThread.call`` from another thread): lost depth events (``lose_events``: the book moves,
nobody hears it), duplicates, out-of-order pairs, random faults (``p_lose``, ``p_dup``,
``p_swap``), a crossing update, stalled connections (``stall``/``resume``), abrupt
disconnects (``drop``), ``serverShutdown`` followed by a close after ``grace`` seconds
(``shutdown``), arbitrary text (``send_raw``), REST errors on the next snapshots (``fail_snapshots``), snapshots that lag
the stream (``lag_snapshots``) or are not JSON (``corrupt_snapshots``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shrivenq.binance.decimal import format_fixed
from shrivenq.sim import check_ports
from shrivenq.sim.binance_market import DEFAULT_SYMBOLS, BinanceMarket, SimSymbol, dumps
from shrivenq.sim.thread import ServerThread

log = logging.getLogger("shrivenq.sim.binance")
_ws_log = logging.getLogger("shrivenq.sim.binance.ws")

MAX_STREAMS = 1024
_STREAM = re.compile(r"([a-z0-9]+)@(depth(?:@(?:100|250|500)ms)?|trade|bookTicker)")
PATHS = {"spot": {"/stream": {"depth", "trade", "bookTicker"}},
         "usdm": {"/public/stream": {"depth", "bookTicker"}, "/market/stream": {"trade"}}}


def depth_weight(market: str, limit: int) -> int:
    if market == "spot":
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    return 2 if limit < 100 else 5 if limit == 100 else 10 if limit == 500 else 20


@dataclass
class SimStats:
    messages_sent: int = 0
    depth_sent: int = 0
    bytes_sent: int = 0
    pings: int = 0
    pongs: int = 0            # pongs that echoed their ping's payload in time


class SimConnection:
    """One client connection: its streams, counters, and (``record=True``) what it was sent."""

    def __init__(self, server: "BinanceSimServer", conn_id: int, ws: ServerConnection,
                 path: str, streams: list[str]):
        self.id = conn_id
        self.server = server
        self.path = path
        self.streams = streams
        live = PATHS[server.market][path]
        self.live_streams = {s for s in streams if _kind(s) in live}
        self.stats = SimStats()
        self.sent: list[str] | None = [] if server.record else None
        self.opened = time.monotonic()
        self.closed_at: float | None = None
        self.close_reason = ""
        self._ws = ws
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._resume = asyncio.Event()
        self._resume.set()

    def __repr__(self) -> str:
        return f"SimConnection(id={self.id}, path={self.path}, sent={self.stats.messages_sent})"

    @property
    def open(self) -> bool:
        return self.closed_at is None

    async def wait_closed(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self._ws.wait_closed(), timeout)


def _kind(stream: str) -> str:
    m = _STREAM.fullmatch(stream)
    kind = m.group(2) if m else ""
    return "depth" if kind.startswith("depth") else kind


class BinanceSimServer:
    """``async with BinanceSimServer(market="spot") as sim:`` (or start()/stop())."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, rest_port: int | None = 0,
                 market: str = "spot", symbols: tuple[SimSymbol, ...] = DEFAULT_SYMBOLS,
                 seed: int = 1, interval: float = 0.02, trade_every: int = 3,
                 depth: int = 60, max_changes: int = 20, ping_interval: float = 20.0,
                 pong_timeout: float = 60.0, max_age: float | None = None,
                 record: bool = False, weight_limit: int | None = None,
                 weight_window: float = 60.0, max_streams: int = MAX_STREAMS):
        if market not in PATHS:
            raise ValueError(f"market must be spot or usdm, not {market!r}")
        self.host, self.port, self.rest_port = host, port, rest_port
        self.market_name = self.market = market
        self.futures = market == "usdm"
        self.book_market = BinanceMarket(symbols, futures=self.futures, seed=seed, depth=depth)
        self.interval, self.trade_every, self.max_changes = interval, trade_every, max_changes
        self.ping_interval, self.pong_timeout, self.max_age = ping_interval, pong_timeout, max_age
        self.record = record
        self.weight_limit = weight_limit or (2400 if self.futures else 6000)
        self.weight_window = weight_window
        self.max_streams = max_streams
        self.connections: list[SimConnection] = []
        self.rng = random.Random(seed * 7919)
        # faults
        self.p_lose = self.p_dup = self.p_swap = 0.0
        self._lose = self._dup = self._swap = 0
        self._cross: set[str] = set()
        self._held: dict[str, tuple] = {}
        self._fail: collections.deque[tuple[int, float]] = collections.deque()
        self._lag: collections.deque[int] = collections.deque()
        self._corrupt = 0
        self.paused = False
        # REST accounting
        self.rest_requests: list[tuple[str, int]] = []   # (path?query, status)
        self.banned = 0
        self.too_many = 0
        self._window_start = time.monotonic()
        self._used = 0
        self._told_to_wait_until = 0.0
        self.lost_events = 0
        self.steps = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws_server = None
        self._http_server = None
        self._tasks: set[asyncio.Task] = set()
        self._http_writers: set[asyncio.StreamWriter] = set()
        self._ticker: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def books(self):
        return self.book_market.books

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def live(self) -> list[SimConnection]:
        return [c for c in self.connections if c.open]

    async def start(self) -> "BinanceSimServer":
        self._loop = asyncio.get_running_loop()
        self._ws_server = await serve(
            self._handler, self.host, self.port, process_request=self._process_request,
            compression=None, ping_interval=None, max_size=1 << 16, close_timeout=2,
            logger=_ws_log)
        self.port = self._ws_server.sockets[0].getsockname()[1]
        if self.rest_port is not None:
            self._http_server = await asyncio.start_server(self._http_client, self.host,
                                                           self.rest_port)
            self.rest_port = self._http_server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick_loop())
        log.info("Binance %s simulator on %s (REST %s)", self.market, self.ws_url,
                 self.rest_url)
        return self

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._http_server is not None:
            self._http_server.close()
        for writer in list(self._http_writers):   # idle keep-alive clients
            writer.transport.abort()
        for conn in self.connections:
            conn._resume.set()
        if self._ws_server is not None:
            self._ws_server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._ws_server.wait_closed(), 5)
            except TimeoutError:
                pass
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *( [self._ticker] if self._ticker else []),
                             return_exceptions=True)

    async def __aenter__(self) -> "BinanceSimServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def wait_for_connections(self, n: int, timeout: float = 10) -> list[SimConnection]:
        deadline = time.monotonic() + timeout
        while len(self.connections) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.connections)} of {n} connections")
            await asyncio.sleep(0.01)
        return self.connections

    # --- faults ----------------------------------------------------------------------------

    def lose_events(self, n: int = 1) -> None:
        """The next ``n`` depth events move the book but reach nobody (a sequence gap)."""
        self._lose += n

    def duplicate_events(self, n: int = 1) -> None:
        self._dup += n

    def swap_events(self, n: int = 1) -> None:
        """The next ``n`` depth events are each held back and sent after the one after it."""
        self._swap += n

    def cross_book(self, symbol: str) -> None:
        """The next depthUpdate of ``symbol`` also puts a bid at the best ask (an exchange bug;
        the true book crosses too, so a client must resync)."""
        self._cross.add(symbol)

    def fail_snapshots(self, n: int = 1, status: int = 429, retry_after: float = 1) -> None:
        self._fail.extend([(status, retry_after)] * n)

    def lag_snapshots(self, n: int = 1, updates: int = 30) -> None:
        """The next ``n`` snapshots are the book of ``updates`` events ago."""
        self._lag.extend([updates] * n)

    def corrupt_snapshots(self, n: int = 1) -> None:
        self._corrupt += n

    def send_raw(self, text: str, conn: SimConnection | None = None) -> None:
        """Queue ``text`` as is (hostile input: not JSON, bad fields, bad decimals)."""
        for c in [conn] if conn else self.live:
            c._queue.put_nowait(text)

    def stall(self, conn: SimConnection | None = None) -> None:
        for c in [conn] if conn else self.live:
            c._resume.clear()

    def resume(self, conn: SimConnection | None = None) -> None:
        for c in [conn] if conn else self.connections:
            c._resume.set()

    def drop(self, conn: SimConnection | None = None) -> None:
        """Abrupt close: the TCP connection is cut without a close frame."""
        for c in [conn] if conn else self.live:
            c.close_reason = "dropped"
            c._ws.transport.abort()

    def shutdown(self, conn: SimConnection | None = None, grace: float = 0.5) -> None:
        """Send ``serverShutdown`` and close the connection ``grace`` seconds later."""
        for c in [conn] if conn else self.live:
            msg = dumps({"e": "serverShutdown", "E": int(time.time() * 1000)})
            c._queue.put_nowait(msg)
            self._spawn(self._close_later(c, grace, 1001, "server shutdown"))

    async def _close_later(self, conn: SimConnection, delay: float, code: int, reason: str):
        await asyncio.sleep(delay)
        if conn.open:
            conn.close_reason = reason
            await conn._ws.close(code, reason)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the market ------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.paused:
                self.step()

    def step(self) -> None:
        """Move every symbol once and send what Binance would send."""
        self.steps += 1
        m = self.book_market
        for symbol in m.books:
            low = symbol.lower()
            data = m.depth_update(symbol, self.max_changes)
            if symbol in self._cross:
                self._cross.discard(symbol)
                book, spec = m.books[symbol], m.specs[symbol]
                if book.asks:
                    best = min(book.asks)
                    places = spec.price_scale if self.futures else 8
                    qty = format_fixed(spec.step, spec.qty_scale, spec.qty_scale if self.futures else 8)
                    data["b"].append([format_fixed(best, spec.price_scale, places), qty])
                    book.bids[best] = spec.step
                    book.history[-1][1][best] = spec.step
            self._send_depth(low, symbol, data)
            if self.steps % self.trade_every == 0:
                self._broadcast(f"{low}@trade", "trade", m.trade(symbol))
                self._broadcast(f"{low}@bookTicker", "bookTicker", m.book_ticker(symbol))

    def _send_depth(self, low: str, symbol: str, data: dict) -> None:
        r = self.rng
        if self._lose or (self.p_lose and r.random() < self.p_lose):
            self._lose = max(0, self._lose - 1)
            self.lost_events += 1
            return
        held = self._held.pop(symbol, None)
        if self._swap or (self.p_swap and r.random() < self.p_swap):
            self._swap = max(0, self._swap - 1)
            if held is None:
                self._held[symbol] = data
                return
        self._broadcast_depth(low, data)
        if held is not None:
            self._broadcast_depth(low, held)
        if self._dup or (self.p_dup and r.random() < self.p_dup):
            self._dup = max(0, self._dup - 1)
            self._broadcast_depth(low, data)

    def _broadcast_depth(self, low: str, data: dict) -> None:
        self._broadcast(None, "depth", data, low)

    def _broadcast(self, stream: str | None, kind: str, data: dict, low: str = "") -> None:
        cache: dict[str, str] = {}
        for conn in self.connections:
            if not conn.open:
                continue
            for name in conn.live_streams:
                if (name == stream) if stream else (name.startswith(low + "@depth")):
                    msg = cache.get(name)
                    if msg is None:
                        msg = cache[name] = dumps({"stream": name, "data": data})
                    conn._queue.put_nowait(msg)
                    if kind == "depth":
                        conn.stats.depth_sent += 1

    # --- WebSocket -------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request):
        parts = urlsplit(request.path)
        if parts.path not in PATHS[self.market]:
            return connection.respond(HTTPStatus.NOT_FOUND, "no such stream path\n")
        query = parse_qs(parts.query)
        streams = [s for s in (query.get("streams") or [""])[0].split("/") if s]
        if not streams:
            return connection.respond(HTTPStatus.BAD_REQUEST, "no streams\n")
        if len(streams) > self.max_streams:
            return connection.respond(HTTPStatus.BAD_REQUEST,
                                      f"{len(streams)} streams; at most {self.max_streams}\n")
        for s in streams:
            m = _STREAM.fullmatch(s)
            if m is None or m.group(1).upper() not in self.book_market.books:
                return connection.respond(HTTPStatus.BAD_REQUEST, f"invalid stream {s!r}\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path)
        streams = (parse_qs(parts.query).get("streams") or [""])[0].split("/")
        conn = SimConnection(self, next(self._ids), ws, parts.path, streams)
        self.connections.append(conn)
        tasks = [asyncio.create_task(self._sender(conn)), asyncio.create_task(self._pinger(conn))]
        if self.max_age:
            tasks.append(asyncio.create_task(self._close_later(conn, self.max_age, 1000,
                                                               "24 hours reached")))
        try:
            async for _ in ws:   # Binance ignores what clients send on market streams
                pass
        except ConnectionClosed:
            pass
        finally:
            conn.closed_at = time.monotonic()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sender(self, conn: SimConnection) -> None:
        ws, q = conn._ws, conn._queue
        try:
            while True:
                msg = await q.get()
                if not conn._resume.is_set():
                    await conn._resume.wait()
                await ws.send(msg)
                st = conn.stats
                st.messages_sent += 1
                st.bytes_sent += len(msg)
                if conn.sent is not None:
                    conn.sent.append(msg)
        except ConnectionClosed:
            pass

    async def _pinger(self, conn: SimConnection) -> None:
        ws = conn._ws
        try:
            while True:
                await asyncio.sleep(self.ping_interval)
                payload = os.urandom(8)
                waiter = await ws.ping(payload)   # resolves only on a pong echoing payload
                conn.stats.pings += 1
                try:
                    await asyncio.wait_for(waiter, self.pong_timeout)
                    conn.stats.pongs += 1
                except TimeoutError:
                    conn.close_reason = "pong timeout"
                    await ws.close(1008, "pong timeout")
                    return
        except ConnectionClosed:
            pass

    # --- REST ------------------------------------------------------------------------------

    async def _http_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        self._http_writers.add(writer)
        try:
            while True:   # keep-alive: python-binance's requests session reuses connections
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, _ = lines[0].split(" ", 2)
                except ValueError:
                    return
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1].strip() or 0)
                if length:
                    await reader.readexactly(min(length, 1 << 16))
                status, headers, body = self._route(method.upper(), target)
                self.rest_requests.append((target, status))
                head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                        "Content-Type: application/json;charset=UTF-8",
                        f"Content-Length: {len(body)}"]
                head += [f"{k}: {v}" for k, v in headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self._http_writers.discard(writer)
            writer.close()

    def _weigh(self, weight: int) -> tuple[int, dict, bytes] | None:
        now = time.monotonic()
        if now - self._window_start >= self.weight_window:
            self._window_start, self._used = now, 0
        retry = max(1, int(self._window_start + self.weight_window - now + 0.999))
        if now < self._told_to_wait_until:
            self.banned += 1
            return 418, {"Retry-After": str(retry)}, dumps(
                {"code": -1003, "msg": "Way too many requests; IP banned."}).encode()
        if self._used + weight > self.weight_limit:
            self.too_many += 1
            self._told_to_wait_until = self._window_start + self.weight_window
            return 429, {"Retry-After": str(retry)}, dumps(
                {"code": -1003, "msg": "Too many requests; please use the websocket."}).encode()
        self._used += weight
        return None

    def _route(self, method: str, target: str) -> tuple[int, dict, bytes]:
        parts = urlsplit(target)
        prefix = "/fapi/v1/" if self.futures else "/api/v3/"
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if method != "GET" or not path.startswith(prefix):
            return 404, {}, dumps({"code": -1, "msg": "not found"}).encode()
        name = path[len(prefix):]
        weights = {"ping": 1, "time": 1, "exchangeInfo": 1 if self.futures else 20}
        if name == "depth":
            try:
                limit = int(query.get("limit", "500" if self.futures else "100"))
            except ValueError:
                limit = -1
            ok = (limit in (5, 10, 20, 50, 100, 500, 1000) if self.futures
                  else 1 <= limit <= 5000)
            if not ok:
                return 400, {}, dumps({"code": -1100, "msg": "Illegal limit."}).encode()
            weight = depth_weight(self.market, limit)
        elif name in weights:
            weight = weights[name]
        else:
            return 404, {}, dumps({"code": -1, "msg": "not found"}).encode()
        refused = self._weigh(weight)
        if refused is not None:
            return refused
        used = {"X-MBX-USED-WEIGHT-1M": str(self._used)}
        m = self.book_market
        if name == "ping":
            return 200, used, b"{}"
        if name == "time":
            return 200, used, dumps({"serverTime": int(time.time() * 1000)}).encode()
        if name == "exchangeInfo":
            return 200, used, dumps(m.exchange_info()).encode()
        symbol = query.get("symbol", "")
        if symbol not in m.books:
            return 400, used, dumps({"code": -1121, "msg": "Invalid symbol."}).encode()
        if self._fail:
            status, retry = self._fail.popleft()
            hdr = dict(used, **({"Retry-After": f"{retry:g}"} if status in (418, 429) else {}))
            return status, hdr, dumps({"code": -1003, "msg": "injected failure"}).encode()
        if self._corrupt:
            self._corrupt -= 1
            return 200, used, b'{"lastUpdateId": 12, "bids": [["1.0", "oops'
        at = None
        if self._lag:
            back = self._lag.popleft()
            hist = m.books[symbol].history
            at = hist[max(0, len(hist) - 1 - back)][0]
        return 200, used, dumps(m.snapshot(symbol, limit, at=at)).encode()


class SimThread(ServerThread):
    """Run a ``BinanceSimServer`` on its own loop in a background thread (for ``--sim``)::

        with SimThread(market="spot") as sim:
            ...   # sim.ws_url, sim.rest_url; faults through thread.call(fn, *args)
    """

    def __init__(self, **kwargs: Any):
        super().__init__(BinanceSimServer(**kwargs), "binance-sim")


def banner(server: BinanceSimServer) -> str:
    """What ``shrivenq sim binance`` prints."""
    symbols = ", ".join(server.books)
    paths = ", ".join(PATHS[server.market])
    return "\n".join([
        f"Binance {server.market} simulator: {symbols}",
        f"  streams  {server.ws_url}  ({paths}?streams=btcusdt@depth@100ms/...)",
        f"  REST     {server.rest_url}  ({'/fapi/v1' if server.futures else '/api/v3'}"
        "/depth, /exchangeInfo, /ping, /time)",
    ])


async def serve_forever(host: str = "127.0.0.1", port: int = 9443, rest_port: int | None = None,
                        market: str = "spot", seed: int = 1, interval: float = 0.1,
                        on_ready: Callable[[BinanceSimServer], None] | None = None) -> None:
    """Serve until cancelled. ``rest_port`` defaults to ``port + 1`` (0 with 0)."""
    if rest_port is None:
        rest_port = port + 1 if port else 0
    async with BinanceSimServer(host=host, port=port, rest_port=rest_port, market=market,
                                seed=seed, interval=interval) as server:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Future()


def run_binance_sim(host: str = "127.0.0.1", port: int = 9443, rest_port: int | None = None,
                    market: str = "spot", seed: int = 1, interval: float = 0.1,
                    out=None) -> int:
    """The whole of ``shrivenq sim binance``: print the banner, serve until Ctrl-C, return 0.
    A bad market or interval, or a port that cannot be listened on, is ConfigError."""
    import sys

    from shrivenq.errors import ConfigError

    out = out or sys.stdout
    if market not in PATHS:
        raise ConfigError(f"--market {market!r} is not one of {', '.join(PATHS)}")
    if not (math.isfinite(interval) and interval > 0):
        raise ConfigError(f"--interval must be positive seconds, not {interval:g}")
    rest_port = check_ports(port, rest_port)

    def ready(server: BinanceSimServer) -> None:
        print(banner(server), file=out, flush=True)

    try:
        asyncio.run(serve_forever(host, port, rest_port, market, seed, interval, ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0
