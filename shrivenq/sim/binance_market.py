"""A synthetic Binance market: per symbol a true L2 book that moves like a real one, and the
exact JSON Binance would send about it (depthUpdate, trade, bookTicker, REST depth snapshot,
exchangeInfo). The simulator serves it; the sync tests and benchmarks use it directly.

Per symbol the mid price walks on the tick grid; both sides hold up to ``depth`` levels
within ``depth`` ticks of the mid; each step changes a few levels near the top (new absolute
quantities, deletions, levels the mid moved through). The book is never crossed. Spot ids
are contiguous (``U`` = previous ``u`` + 1, one id per changed level); USD-M ids jump and
carry ``pu``. Everything derives from one seed. The true book after every event is kept
(``book_at``) so tests can compare a client's book at any update id.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass

from shrivenq.binance.decimal import format_fixed

_DUMP = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class SimSymbol:
    symbol: str
    price: int          # opening mid, fixed-point at price_scale
    price_scale: int
    qty_scale: int
    tick: int = 1       # tick size in price units
    step: int = 1       # lot step in quantity units

    @property
    def tick_size(self) -> str:
        return format_fixed(self.tick, self.price_scale, 8)

    @property
    def step_size(self) -> str:
        return format_fixed(self.step, self.qty_scale, 8)


DEFAULT_SYMBOLS = (
    SimSymbol("BTCUSDT", 6_420_000, 2, 5),      # tick 0.01, step 0.00001
    SimSymbol("ETHUSDT", 315_000, 2, 4),        # tick 0.01, step 0.0001
    SimSymbol("BNBUSDT", 61_230, 2, 3),
    SimSymbol("SOLUSDT", 14_512, 2, 3),
    SimSymbol("XRPUSDT", 5_231, 4, 1),
    SimSymbol("DOGEUSDT", 14_050, 5, 0),
)


class SymbolBook:
    """One symbol's true book, ids and event history."""

    def __init__(self, spec: SimSymbol, rng: random.Random, futures: bool, depth: int,
                 history: int):
        self.spec = spec
        self.rng = rng
        self.futures = futures
        self.depth = depth
        self.mid = spec.price // spec.tick * spec.tick
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.last_id = rng.randrange(1_000_000, 9_000_000)
        self.trade_id = rng.randrange(100_000, 900_000)
        self.history: deque[tuple[int, dict, dict]] = deque(maxlen=history)
        t = spec.tick
        for k in range(1, depth + 1):
            if rng.random() < 0.8:
                self.bids[self.mid - k * t] = self._qty()
            if rng.random() < 0.8:
                self.asks[self.mid + k * t] = self._qty()
        self.history.append((self.last_id, dict(self.bids), dict(self.asks)))

    def _qty(self) -> int:
        r = self.rng
        return r.choice((1, 2, 5, 10, 25, 100, 250, 1000, 4000)) * r.randint(1, 40) * self.spec.step

    def step(self, max_changes: int = 20) -> tuple[int, int, int, list, list]:
        """Move the book once: (U, u, pu, bid changes, ask changes); changes are (price, qty)."""
        r, t = self.rng, self.spec.tick
        move = r.choice((-1, 0, 0, 0, 1))
        self.mid = max(self.mid + move * t, (self.depth + 2) * t)
        bid_ch: dict[int, int] = {}
        ask_ch: dict[int, int] = {}
        for p in [p for p in self.bids if p >= self.mid or p < self.mid - self.depth * t]:
            bid_ch[p] = 0
        for p in [p for p in self.asks if p <= self.mid or p > self.mid + self.depth * t]:
            ask_ch[p] = 0
        for changes, sign in ((bid_ch, -1), (ask_ch, 1)):
            for _ in range(r.randint(1, max(1, max_changes // 2))):
                k = min(int(r.expovariate(0.25)) + 1, self.depth)
                price = self.mid + sign * k * t
                changes[price] = 0 if r.random() < 0.2 else self._qty()
        bids = list(bid_ch.items())[:max_changes]
        asks = list(ask_ch.items())[:max_changes]
        for p, q in bids:
            self._set(self.bids, p, q)
        for p, q in asks:
            self._set(self.asks, p, q)
        n = max(1, len(bids) + len(asks))
        prev = self.last_id
        first = prev + 1 + (r.randint(0, 3) if self.futures else 0)
        self.last_id = first + n - 1
        self.history.append((self.last_id, dict(self.bids), dict(self.asks)))
        return first, self.last_id, prev, bids, asks

    @staticmethod
    def _set(side: dict, price: int, qty: int) -> None:
        if qty:
            side[price] = qty
        else:
            side.pop(price, None)

    def book_at(self, update_id: int) -> tuple[dict, dict] | None:
        """The true (bids, asks) right after the event whose ``u`` is ``update_id``."""
        for u, bids, asks in reversed(self.history):
            if u == update_id:
                return bids, asks
            if u < update_id:
                return None
        return None


class BinanceMarket:
    """Several symbols' books and the exchange's JSON about them."""

    def __init__(self, symbols=DEFAULT_SYMBOLS, futures: bool = False, seed: int = 1,
                 depth: int = 60, history: int = 20_000):
        self.futures = futures
        self.specs = {s.symbol: s for s in symbols}
        rng = random.Random(seed)
        self.books = {s.symbol: SymbolBook(s, random.Random(rng.random()), futures, depth,
                                           history) for s in symbols}
        self.rng = random.Random(rng.random())
        self.time_ms = 1_763_600_000_000
        self.places = None if futures else 8   # spot always prints 8 decimals

    def _p(self, spec: SimSymbol, value: int) -> str:
        return format_fixed(value, spec.price_scale, self.places or spec.price_scale)

    def _q(self, spec: SimSymbol, value: int) -> str:
        return format_fixed(value, spec.qty_scale, self.places or spec.qty_scale)

    def depth_update(self, symbol: str, max_changes: int = 20) -> dict:
        """Move ``symbol``'s book and return the depthUpdate ``data`` object."""
        book, spec = self.books[symbol], self.specs[symbol]
        first, last, prev, bids, asks = book.step(max_changes)
        self.time_ms += 1
        data = {"e": "depthUpdate", "E": self.time_ms}
        if self.futures:
            data["T"] = self.time_ms - 1
        data.update({"s": symbol, "U": first, "u": last})
        if self.futures:
            data["pu"] = prev
        data["b"] = [[self._p(spec, p), self._q(spec, q)] for p, q in bids]
        data["a"] = [[self._p(spec, p), self._q(spec, q)] for p, q in asks]
        return data

    def trade(self, symbol: str) -> dict:
        book, spec = self.books[symbol], self.specs[symbol]
        book.trade_id += 1
        self.time_ms += 1
        buyer_maker = self.rng.random() < 0.5
        side = book.bids if buyer_maker else book.asks
        price = (max(side) if buyer_maker else min(side)) if side else book.mid
        data = {"e": "trade", "E": self.time_ms, "s": symbol, "t": book.trade_id,
                "p": self._p(spec, price), "q": self._q(spec, book._qty()),
                "T": self.time_ms - 1, "m": buyer_maker}
        if not self.futures:
            data["M"] = True
        return data

    def book_ticker(self, symbol: str) -> dict:
        book, spec = self.books[symbol], self.specs[symbol]
        bb = max(book.bids) if book.bids else 0
        ba = min(book.asks) if book.asks else 0
        data = {"u": book.last_id, "s": symbol,
                "b": self._p(spec, bb), "B": self._q(spec, book.bids.get(bb, 0)),
                "a": self._p(spec, ba), "A": self._q(spec, book.asks.get(ba, 0))}
        if self.futures:
            data = {"e": "bookTicker", **data, "E": self.time_ms, "T": self.time_ms}
        return data

    def snapshot(self, symbol: str, limit: int = 1000, at: int | None = None) -> dict:
        """The REST depth body: the top ``limit`` levels now (or right after update ``at``)."""
        book, spec = self.books[symbol], self.specs[symbol]
        if at is None:
            last, bids, asks = book.last_id, book.bids, book.asks
        else:
            state = book.book_at(at)
            if state is None:
                raise KeyError(f"{symbol}: no state kept for update id {at}")
            last, (bids, asks) = at, state
        doc = {"lastUpdateId": last}
        if self.futures:
            doc.update({"E": self.time_ms, "T": self.time_ms})
        doc["bids"] = [[self._p(spec, p), self._q(spec, bids[p])]
                       for p in sorted(bids, reverse=True)[:limit]]
        doc["asks"] = [[self._p(spec, p), self._q(spec, asks[p])] for p in sorted(asks)[:limit]]
        return doc

    def exchange_info(self) -> dict:
        symbols = []
        for spec in self.specs.values():
            entry = {"symbol": spec.symbol, "status": "TRADING",
                     "baseAsset": spec.symbol[:-4], "quoteAsset": spec.symbol[-4:],
                     "filters": [
                         {"filterType": "PRICE_FILTER", "minPrice": spec.tick_size,
                          "maxPrice": "1000000.00000000", "tickSize": spec.tick_size},
                         {"filterType": "LOT_SIZE", "minQty": spec.step_size,
                          "maxQty": "9000.00000000", "stepSize": spec.step_size}]}
            if self.futures:
                entry.update({"contractType": "PERPETUAL", "pricePrecision": spec.price_scale,
                              "quantityPrecision": spec.qty_scale})
            symbols.append(entry)
        return {"timezone": "UTC", "serverTime": self.time_ms,
                "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                                "intervalNum": 1, "limit": 2400 if self.futures else 6000}],
                "symbols": symbols}


def dumps(obj) -> str:
    """Compact JSON, as Binance sends it."""
    return _DUMP(obj)
