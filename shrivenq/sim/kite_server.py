"""A Kite Connect simulator on loopback: the ticker WebSocket and the REST calls the SDK needs.

Nobody can test against the real exchange here, so ``KiteSimServer`` speaks Kite's protocol:

WebSocket (``ws://127.0.0.1:PORT/?api_key=...&access_token=...``, as ``KiteTicker`` builds it)
    A wrong path is 404, a wrong or missing API key or access token is HTTP 403 at the
    handshake. Client messages are Kite's JSON: ``{"a": "subscribe", "v": [tokens]}`` (the
    tokens stream in quote mode), ``{"a": "unsubscribe", "v": [tokens]}`` and
    ``{"a": "mode", "v": ["ltp"|"quote"|"full", [tokens]]}`` (applies to subscribed tokens).
    More than 3000 instruments on a connection is refused with a text
    ``{"type": "error", "data": ...}`` message (the subscribe is not applied), as is a message
    that is not one of the three. Tokens the market does not know are accepted and never
    stream (Kite ignores them too). Binary frames carry many packets each, every packet of
    the kind its token's mode calls for (indices get index packets, so a frame mixes kinds).
    When nothing was sent for ``heartbeat_interval`` seconds (1 s) a 1-byte heartbeat goes out.

REST (``http://127.0.0.1:REST_PORT``, for ``KiteConnect(api_key, root=...)``)
    ``POST /session/token`` (``generate_session``; the checksum is verified as Kite does,
    sha256(api_key + request_token + api_secret)), ``DELETE /session/token``,
    ``GET /instruments`` and ``GET /instruments/{exchange}`` (the CSV), ``GET /user/profile``.
    Authenticated routes want ``Authorization: token api_key:access_token`` (403
    ``TokenException`` otherwise). Replies use Kite's JSON envelope.

Demo credentials (``DEMO_*`` below): the API key, secret and request token work out of the
box; the demo request token always yields ``DEMO_ACCESS_TOKEN``, which is also accepted
directly. ``new_request_token()`` mints a single-use one that yields a fresh access token.

The market is ``shrivenq.sim.market.KiteMarket`` over the shipped sample instrument master
(or any ``InstrumentMaster``): one independent market per connection, seeded from the
server's seed and the connection id, ``rate`` ticks per subscribed instrument per second
(``rate=None`` or 0: as fast as the connection takes them, ``max_batch`` packets per frame).

Tests and capture's ``--sim`` use the server object directly. Every connection is a
``SimConnection`` with counters (``stats``) and, when ``record=True``, the exact data
messages it sent, in order (``sent``: ``bytes`` for binary, ``str`` for text). A message is
counted and recorded once websockets accepted it for sending. Fault injection (callable
from any thread): ``drop`` (abrupt TCP close without a close frame after flushing what was
counted, or a clean close with a code), ``stall``/``resume`` (stop sending without closing;
``deaf=True`` also stops reading, so pings go unanswered), ``send_malformed``, ``send_text``
/ ``send_error``, ``reject_tokens`` and ``revoke``; ``drop_after`` drops every new
connection after that many data messages.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shrivenq.kite import (
    KIND_FULL, KIND_INDEX_FULL, KIND_INDEX_QUOTE, KIND_LTP, KIND_QUOTE, MODE_FULL, MODE_LTP,
    MODE_QUOTE, TICK_DTYPE,
)
from shrivenq.kite.instruments import Instrument, InstrumentMaster, sample_csv_bytes
from shrivenq.kite.wire import PACKET_DTYPES, encode_frame
from shrivenq.sim.market import _KIND_FIELDS, KiteMarket, universe_from_instruments

log = logging.getLogger("shrivenq.sim.kite")

DEMO_API_KEY = "shrivenqsimkey01"
DEMO_API_SECRET = "shrivenq-sim-secret-not-a-real-one"
DEMO_REQUEST_TOKEN = "simrequesttoken0000000000000001"
DEMO_ACCESS_TOKEN = "simaccesstoken000000000000000001"
DEMO_USER_ID = "SIM001"

MAX_INSTRUMENTS = 3000
HEARTBEAT = b"\x00"
MODE_CODES = {"ltp": MODE_LTP, "quote": MODE_QUOTE, "full": MODE_FULL}
MODE_NAMES = {v: k for k, v in MODE_CODES.items()}

#: Malformed frames ``send_malformed`` knows by name.
MALFORMED_KINDS = ("truncated", "bad_count", "bad_length", "trailing", "empty")

IST = timezone(timedelta(hours=5, minutes=30))


@dataclass
class ConnectionStats:
    """What one connection sent and received. ``messages_sent`` counts every data message
    (binary and text); the others break it down."""

    messages_sent: int = 0
    binary_sent: int = 0        # tick frames + heartbeats + malformed frames
    text_sent: int = 0
    frames_sent: int = 0        # well-formed tick frames
    packets_sent: int = 0       # packets inside those frames
    packets_by_kind: dict[int, int] = field(default_factory=dict)
    heartbeats_sent: int = 0
    malformed_sent: int = 0
    errors_sent: int = 0        # text {"type": "error"} messages
    bytes_sent: int = 0         # payload bytes of all data messages
    messages_received: int = 0
    unflushed_at_drop: int = 0  # bytes websockets still held when a drop had to abort


class SimConnection:
    """One client connection: subscriptions, counters, the optional log of sent messages."""

    def __init__(self, server: "KiteSimServer", conn_id: int, ws: ServerConnection,
                 record: bool, record_limit: int | None):
        self.id = conn_id
        self.server = server
        self.remote = ws.remote_address
        self.opened_at = time.time()
        self.closed_at: float | None = None
        self.close_reason = ""
        self.subscriptions: dict[int, str] = {}   # token -> "ltp" | "quote" | "full"
        self.stats = ConnectionStats()
        self.sent: collections.deque[bytes | str] | None = (
            collections.deque(maxlen=record_limit) if record else None)
        self.market = KiteMarket(server.universe, seed=server.seed * 1_000_003 + conn_id,
                                 start_time=int(time.time()))
        self.drop_after = server.drop_after
        self._ws = ws
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._stalled = False
        self._deaf = False
        self._drop: tuple[bool, int, str] | None = None   # (clean, code, reason)
        self._outbox: collections.deque[tuple[str, bytes | str]] = collections.deque()
        n = len(server.universe)
        self._mode_by_idx = np.full(n, -1, dtype=np.int8)   # -1: not subscribed
        self._active = np.zeros(0, dtype=np.int64)

    def __repr__(self) -> str:
        return (f"SimConnection(id={self.id}, subscribed={len(self.subscriptions)}, "
                f"sent={self.stats.messages_sent}, open={self.open})")

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def sent_dropped(self) -> int:
        """Messages that fell off the front of a bounded ``sent`` log."""
        return self.stats.messages_sent - (len(self.sent) if self.sent is not None else 0)

    def sent_binary(self) -> list[bytes]:
        """The recorded binary messages (ticks, heartbeats, malformed), in order."""
        if self.sent is None:
            raise RuntimeError("this connection does not record (start the server with record=True)")
        return [m for m in self.sent if isinstance(m, bytes)]

    async def wait_closed(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._closed.wait(), timeout)

    # --- subscription state (loop thread only) ---------------------------------------------

    def _refresh(self) -> None:
        index = self.server._index
        self._mode_by_idx[:] = -1
        for token, mode in self.subscriptions.items():
            i = index.get(token)
            if i is not None:
                self._mode_by_idx[i] = MODE_CODES[mode]
        self._active = np.flatnonzero(self._mode_by_idx >= 0)
        self._wake.set()


def _packet_kinds(modes: np.ndarray, is_index: np.ndarray) -> np.ndarray:
    return np.where(
        modes == MODE_FULL, np.where(is_index, KIND_INDEX_FULL, KIND_FULL),
        np.where(modes == MODE_QUOTE, np.where(is_index, KIND_INDEX_QUOTE, KIND_QUOTE),
                 KIND_LTP)).astype(np.uint8)


def rows_as_kinds(rows: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Full-mode TICK_DTYPE rows cut down to the packet kind each row should travel as:
    only the columns that kind carries are kept, kind/mode/fields/length set to match."""
    if len(rows) and (rows["kind"] == kinds).all():
        return rows
    out = np.zeros(len(rows), dtype=TICK_DTYPE)
    for name in ("token", "segment", "divisor", "tradable"):
        out[name] = rows[name]
    for kind in np.unique(kinds):
        sel = kinds == kind
        src = rows[sel]
        dst = out[sel]
        for name in PACKET_DTYPES[int(kind)].names:
            if name == "depth":
                for col in ("bid_quantity", "bid_price", "bid_orders", "ask_quantity",
                            "ask_price", "ask_orders"):
                    dst[col] = src[col]
            else:
                dst[name] = src[name]
        mode, fields, length = _KIND_FIELDS[int(kind)]
        dst["kind"], dst["mode"], dst["fields"], dst["packet_length"] = kind, mode, fields, length
        out[sel] = dst
    return out


def malformed_frame(kind: str = "truncated") -> bytes:
    """A frame shrivenq's parser rejects, by name (``MALFORMED_KINDS``)."""
    ltp = bytes.fromhex("0003E909" "0024CE03")   # NIFTY 50, last price 24120.35
    good = b"\x00\x01" + b"\x00\x08" + ltp
    if kind == "truncated":
        return good[:-3]
    if kind == "bad_count":
        return b"\x00\x05" + good[2:]             # says 5 packets, holds 1
    if kind == "bad_length":
        return b"\x00\x01" + b"\x00\x07" + ltp[:7]  # no packet kind is 7 bytes long
    if kind == "trailing":
        return good + b"\xde\xad\xbe"
    if kind == "empty":
        return b"\x00\x00" + b"\x00"              # zero packets and a stray byte
    raise ValueError(f"unknown malformed frame kind {kind!r}; one of {MALFORMED_KINDS}")


def _ist_now() -> str:
    return datetime.now(IST).strftime("%Y-%m-%d %H:%M:%S")


class KiteSimServer:
    """The simulator. ``async with KiteSimServer() as sim:`` or ``await sim.start()`` /
    ``await sim.stop()``; ``SimThread`` runs one in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, rest_port: int | None = 0,
                 master: InstrumentMaster | None = None, instruments: int | None = None,
                 rate: float | None = 1.0, seed: int = 1, heartbeat_interval: float = 1.0,
                 frame_interval: float = 0.05, max_batch: int = 500, record: bool = False,
                 record_limit: int | None = None, api_key: str = DEMO_API_KEY,
                 api_secret: str = DEMO_API_SECRET, drop_after: int | None = None):
        if rate is not None and rate < 0:
            raise ValueError("rate must be >= 0 (0 or None: as fast as possible)")
        if not 1 <= max_batch <= 0xFFFF:
            raise ValueError("max_batch must be 1..65535 packets per frame")
        self.host = host
        self.port = port
        self.rest_port = rest_port
        self.master = master if master is not None else sim_master(instruments)
        if instruments is not None and master is not None:
            self.master = InstrumentMaster(list(master)[:instruments])
        self.universe = universe_from_instruments(self.master)
        self._index = {ins.token: i for i, ins in enumerate(self.universe)}
        self._is_index = np.array([ins.is_index for ins in self.universe])
        self._sorted_tokens = np.array(sorted(self._index), dtype=np.uint32)
        self._sorted_pos = np.array([self._index[int(t)] for t in self._sorted_tokens],
                                    dtype=np.int64)
        self.rate = rate or None
        self.seed = seed
        self.heartbeat_interval = heartbeat_interval
        self.frame_interval = frame_interval
        self.max_batch = max_batch
        self.record = record
        self.record_limit = record_limit
        self.api_key = api_key
        self.api_secret = api_secret
        self.drop_after = drop_after
        self.reject_tokens = False          # True: every handshake and REST call gets 403
        self.rejected_handshakes = 0
        self.connections: list[SimConnection] = []
        self._access_tokens: set[str] = {DEMO_ACCESS_TOKEN}
        self._request_tokens: set[str] = set()
        self._ids = itertools.count(1)
        self._pending: dict[int, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws_server = None
        self._http_server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._csv = (sample_csv_bytes() if master is None and instruments is None
                     else self.master.to_csv().encode())

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> "KiteSimServer":
        self._loop = asyncio.get_running_loop()
        self._ws_server = await serve(
            self._handler, self.host, self.port, process_request=self._process_request,
            compression=None, ping_interval=None, max_size=1 << 20, close_timeout=2,
            logger=logging.getLogger("shrivenq.sim.kite.ws"))
        self.port = self._ws_server.sockets[0].getsockname()[1]
        if self.rest_port is not None:
            self._http_server = await asyncio.start_server(self._http_client, self.host,
                                                           self.rest_port)
            self.rest_port = self._http_server.sockets[0].getsockname()[1]
        log.info("Kite simulator on %s (REST %s), %d instruments", self.ws_url,
                 self.rest_url, len(self.universe))
        return self

    async def stop(self) -> None:
        if self._http_server is not None:
            self._http_server.close()
        for conn in self.live:        # a deaf connection could not read the closing handshake
            conn._stalled = False
            if conn._deaf:
                conn._deaf = False
                conn._ws.transport.resume_reading()
        if self._ws_server is not None:
            self._ws_server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._ws_server.wait_closed(), 5)
            except TimeoutError:
                pass
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http_server is not None:
            try:
                await asyncio.wait_for(self._http_server.wait_closed(), 2)
            except TimeoutError:
                pass

    async def __aenter__(self) -> "KiteSimServer":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        await asyncio.Event().wait()

    # --- URLs and credentials --------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """The ticker root, as ``KiteTicker(root=...)`` takes it."""
        return f"ws://{self.host}:{self.port}/"

    @property
    def rest_url(self) -> str | None:
        """The REST root, as ``KiteConnect(root=...)`` takes it."""
        return None if self.rest_port is None else f"http://{self.host}:{self.rest_port}"

    def socket_url(self, api_key: str | None = None, access_token: str | None = None) -> str:
        """The full ticker URL with credentials, exactly as ``KiteTicker`` builds it."""
        return (f"{self.ws_url}?api_key={api_key or self.api_key}"
                f"&access_token={access_token or DEMO_ACCESS_TOKEN}")

    def new_request_token(self) -> str:
        """A single-use request token, as Kite's login redirect would hand over."""
        token = secrets.token_hex(16)
        self._request_tokens.add(token)
        return token

    def add_access_token(self, token: str) -> None:
        self._access_tokens.add(token)

    def revoke(self, token: str) -> None:
        """Make an access token invalid (new handshakes with it get 403)."""
        self._access_tokens.discard(token)

    def token_valid(self, api_key: str, access_token: str) -> bool:
        return (not self.reject_tokens and api_key == self.api_key
                and access_token in self._access_tokens)

    # --- observing -------------------------------------------------------------------------

    @property
    def live(self) -> list[SimConnection]:
        return [c for c in self.connections if c.open]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Poll ``predicate`` on the loop until true; ``TimeoutError`` after ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("simulator condition not reached in time")
            await asyncio.sleep(0.002)

    async def wait_for_connections(self, n: int = 1, timeout: float = 5.0) -> SimConnection:
        """Until ``n`` connections have opened in total; returns the n-th."""
        await self.wait_until(lambda: len(self.connections) >= n, timeout)
        return self.connections[n - 1]

    # --- fault injection (thread-safe) -----------------------------------------------------

    def _targets(self, conn: SimConnection | int | None) -> list[SimConnection]:
        if conn is None:
            return self.live
        if isinstance(conn, int):
            return [c for c in self.connections if c.id == conn]
        return [conn]

    def _poke(self, conn: SimConnection, fn: Callable[[], None] | None = None) -> None:
        def run() -> None:
            if fn is not None:
                fn()
            conn._wake.set()
        if self._loop is None:
            raise RuntimeError("the simulator is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            run()
        else:
            self._loop.call_soon_threadsafe(run)

    def drop(self, conn: SimConnection | int | None = None, clean: bool = False,
             code: int = 1011, reason: str = "") -> None:
        """Drop connection(s). Default: an abrupt TCP close with no WebSocket close frame
        (what a network failure looks like), after flushing every message already counted.
        ``clean=True``: a close frame with ``code`` and ``reason``."""
        for c in self._targets(conn):
            c._drop = (clean, code, reason)
            self._poke(c)

    def stall(self, conn: SimConnection | int | None = None, deaf: bool = False) -> None:
        """Stop sending anything (ticks, heartbeats) without closing. ``deaf=True`` also
        stops reading the socket, so the client's pings go unanswered."""
        for c in self._targets(conn):
            c._stalled = True
            if deaf and not c._deaf:
                c._deaf = True
                self._poke(c, c._ws.transport.pause_reading)
            else:
                self._poke(c)

    def resume(self, conn: SimConnection | int | None = None) -> None:
        for c in self._targets(conn):
            c._stalled = False
            if c._deaf:
                c._deaf = False
                self._poke(c, c._ws.transport.resume_reading)
            else:
                self._poke(c)

    def send_malformed(self, conn: SimConnection | int | None = None,
                       kind: str | bytes = "truncated") -> None:
        """Queue a malformed binary frame (a ``MALFORMED_KINDS`` name or raw bytes); it goes
        out between tick frames and is counted and recorded like any message."""
        data = kind if isinstance(kind, bytes) else malformed_frame(kind)
        for c in self._targets(conn):
            self._poke(c, lambda c=c: c._outbox.append(("malformed", data)))

    def send_text(self, conn: SimConnection | int | None, message: str | dict) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        for c in self._targets(conn):
            self._poke(c, lambda c=c: c._outbox.append(("text", text)))

    def send_error(self, conn: SimConnection | int | None, message: str) -> None:
        """A Kite text error: ``{"type": "error", "data": message}``."""
        for c in self._targets(conn):
            self._poke(c, lambda c=c: c._outbox.append(
                ("error", json.dumps({"type": "error", "data": message}))))

    # --- WebSocket -------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request) -> Any:
        parts = urlsplit(request.path)
        if parts.path not in ("", "/"):
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        query = parse_qs(parts.query)
        api_key = (query.get("api_key") or [""])[0]
        token = (query.get("access_token") or [""])[0]
        if not self.token_valid(api_key, token):
            self.rejected_handshakes += 1
            log.info("handshake from %s refused: bad api_key or access_token (403)",
                     connection.remote_address)
            return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        conn = SimConnection(self, next(self._ids), ws, self.record, self.record_limit)
        self.connections.append(conn)
        log.info("connection %d open from %s", conn.id, conn.remote)
        sender = asyncio.create_task(self._sender(conn))
        self._tasks.add(sender)
        sender.add_done_callback(self._tasks.discard)
        try:
            async for message in ws:
                conn.stats.messages_received += 1
                self._on_client_message(conn, message)
        except ConnectionClosed:
            pass
        finally:
            if not sender.done():
                sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, ConnectionClosed):
                pass
            except Exception:
                log.exception("connection %d: sender failed", conn.id)
            conn.closed_at = time.time()
            conn._closed.set()
            log.info("connection %d closed: %d messages, %d packets, %d heartbeats sent",
                     conn.id, conn.stats.messages_sent, conn.stats.packets_sent,
                     conn.stats.heartbeats_sent)

    def _on_client_message(self, conn: SimConnection, message: str | bytes) -> None:
        def error(text: str) -> None:
            conn._outbox.append(("error", json.dumps({"type": "error", "data": text})))
            conn._wake.set()

        try:
            doc = json.loads(message)
            action, value = doc["a"], doc["v"]
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            error("Invalid message")
            return
        if action in ("subscribe", "unsubscribe"):
            if not isinstance(value, list) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in value):
                error("Invalid instrument tokens")
                return
            if action == "subscribe":
                new = set(conn.subscriptions) | set(value)
                if len(new) > MAX_INSTRUMENTS:
                    error(f"Maximum instruments per connection is {MAX_INSTRUMENTS} "
                          f"(this subscription would make {len(new)})")
                    return
                for t in value:
                    conn.subscriptions[t] = "quote"
            else:
                for t in value:
                    conn.subscriptions.pop(t, None)
        elif action == "mode":
            if (not isinstance(value, list) or len(value) != 2 or value[0] not in MODE_CODES
                    or not isinstance(value[1], list)):
                error("Invalid mode message")
                return
            mode, tokens = value
            for t in tokens:
                if t in conn.subscriptions:
                    conn.subscriptions[t] = mode
        else:
            error(f"Unknown action {str(action)[:40]!r}")
            return
        conn._refresh()

    async def _send(self, conn: SimConnection, what: str, message: bytes | str,
                    packets: np.ndarray | None = None) -> None:
        await conn._ws.send(message)
        st = conn.stats
        st.messages_sent += 1
        st.bytes_sent += len(message)
        if isinstance(message, bytes):
            st.binary_sent += 1
        else:
            st.text_sent += 1
        if what == "ticks":
            st.frames_sent += 1
            st.packets_sent += len(packets)
            kinds, counts = np.unique(packets, return_counts=True)
            for k, n in zip(kinds.tolist(), counts.tolist()):
                st.packets_by_kind[k] = st.packets_by_kind.get(k, 0) + n
        elif what == "heartbeat":
            st.heartbeats_sent += 1
        elif what == "malformed":
            st.malformed_sent += 1
        elif what == "error":
            st.errors_sent += 1
        if conn.sent is not None:
            conn.sent.append(message)
        if conn.drop_after is not None and st.messages_sent >= conn.drop_after \
                and conn._drop is None:
            conn._drop = (False, 1011, "")

    def _build_frame(self, conn: SimConnection, count: int) -> tuple[bytes, np.ndarray]:
        market = conn.market
        market.time = max(market.time, int(time.time()))
        rows = market.ticks(count, KIND_FULL, rate_per_instrument=self.rate or 1000.0,
                            instruments=conn._active)
        pos = self._sorted_pos[np.searchsorted(self._sorted_tokens, rows["token"])]
        kinds = _packet_kinds(conn._mode_by_idx[pos], self._is_index[pos])
        rows = rows_as_kinds(rows, kinds)
        return encode_frame(rows), kinds

    async def _drop_now(self, conn: SimConnection) -> None:
        clean, code, reason = conn._drop
        ws = conn._ws
        if clean:
            conn.close_reason = f"dropped cleanly ({code})"
            await ws.close(code, reason)
            return
        transport = ws.transport
        deadline = asyncio.get_running_loop().time() + 1.0
        while transport.get_write_buffer_size() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.002)
        conn.stats.unflushed_at_drop = transport.get_write_buffer_size()
        conn.close_reason = "dropped (abort)"
        transport.abort()

    async def _sender(self, conn: SimConnection) -> None:
        try:
            await self._send_loop(conn)
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("connection %d: the simulator's sender failed; closing", conn.id)
            await conn._ws.close(1011, "simulator error")

    async def _send_loop(self, conn: SimConnection) -> None:
        loop = asyncio.get_running_loop()
        last_data = last_gen = loop.time()
        due = 0.0
        while True:
            conn._wake.clear()
            if conn._drop is not None:
                await self._drop_now(conn)
                return
            if conn._stalled:
                await conn._wake.wait()
                last_data = last_gen = loop.time()
                due = 0.0
                continue
            while conn._outbox:
                what, message = conn._outbox.popleft()
                await self._send(conn, what, message)
                if conn._drop is not None or conn._stalled:
                    break
            if conn._drop is not None or conn._stalled:
                continue
            n = len(conn._active)
            now = loop.time()
            timeout = self.heartbeat_interval
            if n:
                if self.rate is None:
                    count = self.max_batch
                else:
                    due = min(due + self.rate * n * (now - last_gen), float(self.max_batch))
                    count = int(due)
                    due -= count
                last_gen = now
                if count:
                    frame, kinds = self._build_frame(conn, count)
                    await self._send(conn, "ticks", frame, kinds)
                    last_data = loop.time()
                    if self.rate is None:
                        await asyncio.sleep(0)   # let the reader and other connections run
                        continue
                if self.rate is not None:
                    timeout = max((1.0 - due) / (self.rate * n), self.frame_interval)
            else:
                due, last_gen = 0.0, now
            idle = loop.time() - last_data
            if idle >= self.heartbeat_interval:
                await self._send(conn, "heartbeat", HEARTBEAT)
                last_data = loop.time()
                idle = 0.0
            timeout = min(timeout, self.heartbeat_interval - idle)
            try:
                await asyncio.wait_for(conn._wake.wait(), max(timeout, 0.001))
            except TimeoutError:
                pass

    # --- REST ------------------------------------------------------------------------------

    async def _http_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length") or 0)
                if not 0 <= length <= 1 << 20:
                    raise ValueError("body too large")
                body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
                status, ctype, payload = self._route(method.upper(), target, headers, body)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                    ValueError, UnicodeDecodeError):
                status, ctype, payload = self._json_error(HTTPStatus.BAD_REQUEST,
                                                          "Bad request", "InputException")
            reason = HTTPStatus(status).phrase
            writer.write((f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                          f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                          ).encode() + payload)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _json(status: int, doc: dict) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps(doc).encode()

    def _json_error(self, status: int, message: str, error_type: str) -> tuple[int, str, bytes]:
        return self._json(status, {"status": "error", "message": message, "data": None,
                                   "error_type": error_type})

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if not auth.startswith("token ") or ":" not in auth:
            return False
        api_key, token = auth[6:].split(":", 1)
        return self.token_valid(api_key.strip(), token.strip())

    def _route(self, method: str, target: str, headers: dict[str, str],
               body: bytes) -> tuple[int, str, bytes]:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        if path == "/session/token" and method == "POST":
            return self._session_token(parse_qs(body.decode("utf-8")))
        if path == "/session/token" and method == "DELETE":
            query = parse_qs(parts.query)
            if (query.get("api_key") or [""])[0] != self.api_key:
                return self._json_error(403, "Invalid `api_key`.", "TokenException")
            token = (query.get("access_token") or [""])[0]
            if token != DEMO_ACCESS_TOKEN:
                self._access_tokens.discard(token)
            return self._json(200, {"status": "success", "data": True})
        if method == "GET" and (path == "/instruments" or path.startswith("/instruments/")
                                or path == "/user/profile"):
            if not self._authorized(headers):
                return self._json_error(403, "Incorrect `api_key` or `access_token`.",
                                        "TokenException")
            if path == "/user/profile":
                return self._json(200, {"status": "success", "data": self._profile()})
            if path == "/instruments":
                return 200, "text/csv", self._csv
            exchange = path.split("/", 2)[2].upper()
            rows = [i for i in self.master if i.exchange == exchange]
            return 200, "text/csv", InstrumentMaster(rows).to_csv().encode()
        return self._json_error(404, "Route not found", "GeneralException")

    def _profile(self) -> dict[str, Any]:
        return {"user_id": DEMO_USER_ID, "user_type": "individual", "email": "sim@example.com",
                "user_name": "Simulated User", "user_shortname": "Sim", "broker": "ZERODHA",
                "exchanges": ["NSE", "NFO", "BSE"], "products": ["CNC", "NRML", "MIS"],
                "order_types": ["MARKET", "LIMIT", "SL", "SL-M"], "avatar_url": None,
                "meta": {"demat_consent": "physical"}}

    def _session_token(self, form: dict[str, list[str]]) -> tuple[int, str, bytes]:
        api_key = (form.get("api_key") or [""])[0]
        request_token = (form.get("request_token") or [""])[0]
        checksum = (form.get("checksum") or [""])[0]
        if not api_key or not request_token or not checksum:
            return self._json_error(400, "Missing api_key, request_token or checksum",
                                    "InputException")
        if self.reject_tokens or api_key != self.api_key:
            return self._json_error(403, "Invalid `api_key`.", "TokenException")
        if request_token != DEMO_REQUEST_TOKEN and request_token not in self._request_tokens:
            return self._json_error(403, "Token is invalid or has expired.", "TokenException")
        expected = hashlib.sha256((api_key + request_token + self.api_secret).encode()).hexdigest()
        if not secrets.compare_digest(checksum, expected):
            return self._json_error(403, "Invalid `checksum`.", "TokenException")
        if request_token == DEMO_REQUEST_TOKEN:
            access = DEMO_ACCESS_TOKEN
        else:
            self._request_tokens.discard(request_token)   # single use, as Kite's
            access = secrets.token_hex(16)
        self._access_tokens.add(access)
        data = dict(self._profile(), api_key=api_key, access_token=access,
                    public_token=secrets.token_hex(16), refresh_token="",
                    enctoken=secrets.token_hex(16), login_time=_ist_now())
        return self._json(200, {"status": "success", "data": data})


def sim_master(instruments: int | None = None) -> InstrumentMaster:
    """The shipped sample master; with ``instruments`` above its size, padded with
    synthetic NSE stocks (``SIMSTK00001``...) so load tests can subscribe to thousands."""
    master = InstrumentMaster.sample()
    if instruments is None:
        return master
    rows = list(master)
    if instruments <= len(rows):
        return InstrumentMaster(rows[:instruments])
    rng = np.random.default_rng(11)
    for k in range(instruments - len(rows)):
        exchange_token = 900_000 + k
        rows.append(Instrument(
            instrument_token=(exchange_token << 8) | 1, exchange_token=exchange_token,
            tradingsymbol=f"SIMSTK{k + 1:05d}", name=f"SIMULATED STOCK {k + 1}",
            last_price=round(float(rng.integers(2_000, 400_000)) / 100 // 0.05 * 0.05, 2),
            expiry=None, strike=0.0, tick_size=0.05, lot_size=1, instrument_type="EQ",
            segment="NSE", exchange="NSE"))
    return InstrumentMaster(rows)


class SimThread:
    """Run a ``KiteSimServer`` on its own event loop in a background thread::

        with SimThread(rate=10, record=True) as sim:
            ...   # sim.ws_url, sim.rest_url; fault methods are thread-safe

    Reading ``sim.connections`` and their stats from another thread is fine; call
    ``run(coro)`` to run a coroutine on the simulator's loop."""

    def __init__(self, **kwargs: Any):
        self.server = KiteSimServer(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kite-sim",
                                        daemon=True)

    def __enter__(self) -> KiteSimServer:
        self._thread.start()
        self.run(self.server.start())
        return self.server

    def __exit__(self, *exc: Any) -> None:
        try:
            self.run(self.server.stop(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def run(self, coro, timeout: float | None = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)


def banner(server: KiteSimServer) -> str:
    """What ``shrivenq sim kite`` prints: the URLs and the demo credentials."""
    rate = "as fast as possible" if server.rate is None else f"{server.rate:g}/s per instrument"
    lines = [
        f"Kite simulator: {len(server.universe)} instruments, {rate}",
        f"  ticker   {server.ws_url}  (KiteTicker root; query ?api_key=&access_token=)",
        f"  REST     {server.rest_url}  (KiteConnect root: POST /session/token, "
        "GET /instruments, GET /user/profile)",
        f"  KITE_API_KEY={server.api_key}",
        f"  KITE_API_SECRET={server.api_secret}",
        f"  request_token={DEMO_REQUEST_TOKEN}",
        f"  KITE_ACCESS_TOKEN={DEMO_ACCESS_TOKEN}",
        f"  e.g. {server.socket_url()}",
    ]
    return "\n".join(lines)


async def run(host: str = "127.0.0.1", port: int = 8765, rest_port: int | None = None,
              rate: float | None = 1.0, instruments: int | None = None, seed: int = 1,
              on_ready: Callable[[KiteSimServer], None] | None = None) -> None:
    """Serve until cancelled (Ctrl-C). ``rest_port`` defaults to ``port + 1`` (0 with 0)."""
    if rest_port is None:
        rest_port = port + 1 if port else 0
    server = KiteSimServer(host=host, port=port, rest_port=rest_port, rate=rate,
                           instruments=instruments, seed=seed)
    async with server:
        if on_ready is not None:
            on_ready(server)
        await server.serve_forever()
