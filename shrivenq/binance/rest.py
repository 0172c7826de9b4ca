"""Binance REST through the official python-binance client: exchangeInfo and depth
snapshots, the raw bodies kept exactly as received, paced so that a resync storm over many
symbols never gets the IP banned.

``make_client(market, rest_root)`` builds a ``binance.Client`` (no keys: public endpoints
only) whose URL class attributes point at ``rest_root`` when given (the simulator), e.g.
``API_URL = "http://127.0.0.1:PORT/api"`` and ``FUTURES_URL = ".../fapi"``.

``WeightPacer`` is sans-I/O: it keeps the request weight sent in the last minute under a
share of Binance's limit (spot 6000, USD-M 2400 per minute), follows the server's
``X-MBX-USED-WEIGHT-1M``, and after a 429 or 418 waits at least ``Retry-After`` (doubling
its own pause on each repeat, up to ``max_pause``). ``SnapshotFetcher`` is the asyncio
worker that serves snapshot requests one at a time through the pacer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable

import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException

from shrivenq.errors import ConfigError, ExchangeError

log = logging.getLogger("shrivenq.binance.rest")

WEIGHT_LIMIT = {"spot": 6000, "usdm": 2400}
EXCHANGE_INFO_WEIGHT = {"spot": 20, "usdm": 1}
SPOT_LIMITS = range(1, 5001)
USDM_LIMITS = (5, 10, 20, 50, 100, 500, 1000)


def depth_weight(market: str, limit: int) -> int:
    """Binance's request weight of GET depth with ``limit`` levels."""
    if market == "spot":
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    return 2 if limit < 100 else 5 if limit == 100 else 10 if limit == 500 else 20


def check_limit(market: str, limit: int) -> int:
    ok = limit in SPOT_LIMITS if market == "spot" else limit in USDM_LIMITS
    if not ok:
        allowed = "1..5000" if market == "spot" else ", ".join(map(str, USDM_LIMITS))
        raise ConfigError(f"snapshot limit {limit} is not allowed on {market} ({allowed})")
    return limit


def make_client(market: str, rest_root: str | None = None, timeout: float = 10.0) -> Client:
    """A python-binance Client for public market data, optionally pointed at ``rest_root``."""
    attrs: dict = {"REQUEST_TIMEOUT": timeout}
    if rest_root is not None:
        root = rest_root.rstrip("/")
        if not root.startswith(("http://", "https://")):
            raise ConfigError(f"Binance REST root must be http(s)://host, not {rest_root!r}")
        attrs.update(API_URL=root + "/api", FUTURES_URL=root + "/fapi")
    cls = type("ShrivenqBinanceClient", (Client,), attrs)
    return cls(ping=False)


class WeightPacer:
    """When may the next request of a given weight go out? (times are monotonic seconds)"""

    def __init__(self, limit_per_minute: int, share: float = 0.5, window: float = 60.0,
                 max_pause: float = 600.0):
        if not 0 < share <= 1:
            raise ConfigError(f"weight share must be in (0, 1], not {share}")
        self.budget = max(1, int(limit_per_minute * share))
        self.window = window
        self.max_pause = max_pause
        self.sent_log: deque[tuple[float, int]] = deque()
        self.blocked_until = 0.0
        self.strikes = 0          # 429/418s in a row
        self.banned = 0
        self.too_many = 0

    def _expire(self, now: float) -> int:
        log_ = self.sent_log
        while log_ and log_[0][0] <= now - self.window:
            log_.popleft()
        return sum(w for _, w in log_)

    def delay(self, weight: int, now: float) -> float:
        """Seconds to wait before sending a request of ``weight`` (0: go now)."""
        wait = max(0.0, self.blocked_until - now)
        used = self._expire(now)
        if used + weight > self.budget:
            acc = used
            for t, w in self.sent_log:
                acc -= w
                if acc + weight <= self.budget:
                    wait = max(wait, t + self.window - now)
                    break
        return wait

    def sent(self, weight: int, now: float) -> None:
        self.sent_log.append((now, weight))

    def on_response(self, status: int, headers, now: float) -> None:
        used = headers.get("X-MBX-USED-WEIGHT-1M") if headers is not None else None
        retry = headers.get("Retry-After") if headers is not None else None
        try:
            retry_s = float(retry) if retry is not None else None
        except ValueError:
            retry_s = None
        if status in (418, 429):
            self.strikes += 1
            if status == 418:
                self.banned += 1
            else:
                self.too_many += 1
            pause = min(self.max_pause, 2.0 ** min(self.strikes - 1, 10))
            self.blocked_until = max(self.blocked_until, now + max(retry_s or 0.0, pause))
            return
        self.strikes = 0
        if used is not None:
            try:
                server_used = int(used)
            except ValueError:
                return
            if server_used >= self.budget:   # others share this IP: wait out the minute
                self.blocked_until = max(self.blocked_until, now + (retry_s or self.window / 4))


class RestFailure(Exception):
    """A REST call that failed in a way worth retrying (carries the HTTP status, or 0)."""

    def __init__(self, status: int, reason: str, headers=None):
        self.status, self.reason, self.headers = status, reason, headers or {}
        super().__init__(f"HTTP {status}: {reason}" if status else reason)


def call_raw(client: Client, fn: Callable[[], object]) -> tuple[bytes, dict]:
    """Run a python-binance call; return the body exactly as received and the headers.
    A 200 whose body is not JSON is returned too (the caller stores and then refuses it)."""
    try:
        fn()
    except BinanceAPIException as exc:
        resp = getattr(exc, "response", None)
        headers = dict(resp.headers) if resp is not None else {}
        raise RestFailure(exc.status_code, f"{exc.message or 'error'} (code {exc.code})"[:200],
                          headers) from None
    except BinanceRequestException:
        pass   # 2xx, but not JSON: hand the body on as received
    except requests.RequestException as exc:
        raise RestFailure(0, f"{type(exc).__name__}: {str(exc)[:160]}") from None
    resp = client.response
    return resp.content, dict(resp.headers)


def fetch_exchange_info(client: Client, market: str) -> bytes:
    fn = client.get_exchange_info if market == "spot" else client.futures_exchange_info
    try:
        body, _ = call_raw(client, fn)
    except RestFailure as exc:
        raise ExchangeError(f"Binance {market} exchangeInfo failed: {exc}") from None
    return body


SnapshotCallback = Callable[[str, bytes, int, int], None]


class SnapshotFetcher:
    """Serves snapshot requests one at a time, paced; ``on_body(symbol, body, wall, mono)``
    is called on the event loop with each successful body, as received."""

    def __init__(self, client: Client, market: str, on_body: SnapshotCallback, *,
                 limit: int = 1000, pacer: WeightPacer | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.client, self.market = client, market
        self.limit = check_limit(market, limit)
        self.weight = depth_weight(market, self.limit)
        self.pacer = pacer or WeightPacer(WEIGHT_LIMIT[market])
        self.on_body = on_body
        self.clock = clock
        self.queue: deque[str] = deque()
        self.queued: set[str] = set()
        self.wake = asyncio.Event()
        self.requests = self.failures = self.bodies = 0
        self._in_row = 0

    def request(self, symbol: str) -> None:
        if symbol not in self.queued:
            self.queued.add(symbol)
            self.queue.append(symbol)
            self.wake.set()

    def _call(self, symbol: str):
        if self.market == "spot":
            return lambda: self.client.get_order_book(symbol=symbol, limit=self.limit)
        return lambda: self.client.futures_order_book(symbol=symbol, limit=self.limit)

    async def run(self) -> None:
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            wait = self.pacer.delay(self.weight, self.clock())
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))
                continue
            symbol = self.queue[0]
            self.pacer.sent(self.weight, self.clock())
            self.requests += 1
            try:
                body, headers = await asyncio.to_thread(call_raw, self.client, self._call(symbol))
            except RestFailure as exc:
                self.failures += 1
                self._in_row += 1
                self.pacer.on_response(exc.status, exc.headers, self.clock())
                level = logging.ERROR if exc.status == 418 else logging.WARNING
                log.log(level, "%s depth snapshot failed (%s); retrying after %.1fs", symbol,
                        exc, self.pacer.delay(self.weight, self.clock()))
                if exc.status not in (418, 429):
                    self.pacer.blocked_until = max(self.pacer.blocked_until,
                                                   self.clock() + min(30.0, 0.5 * 2 ** min(self._in_row, 6)))
                continue
            self.pacer.on_response(200, headers, self.clock())
            self._in_row = 0
            self.queue.popleft()
            self.queued.discard(symbol)
            self.bodies += 1
            self.on_body(symbol, body, time.time_ns(), time.monotonic_ns())
