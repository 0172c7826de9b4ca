"""A synthetic but realistic Kite market: the tick stream the simulator serves and the
compression tests and benchmarks measure.

Per instrument: last price follows a random walk on the instrument's tick grid; a persistent
5-level book sits around it (a level's quantity and order count change only now and then);
volume is cumulative; derivatives carry open interest that drifts. Instruments interleave in
random order. Everything derives from one seed, so a stream can be regenerated exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shrivenq.kite import (
    FIELD_DEPTH, FIELD_EXCHANGE_TIMESTAMP, FIELD_FULL, FIELD_LTP, FIELD_OHLC, FIELD_QUOTE,
    KIND_FULL, KIND_INDEX_FULL, KIND_INDEX_QUOTE, KIND_LTP, KIND_QUOTE, MODE_FULL,
    MODE_LTP, MODE_QUOTE, TICK_DTYPE,
)

SEGMENT_INDICES = 9


@dataclass(frozen=True)
class SimInstrument:
    token: int          # segment in the low byte, as Kite's tokens
    price: int          # opening price, fixed-point (divisor 100 unless cds/bcd/nco)
    tick: int           # tick size in the same fixed-point units
    lot: int = 1        # trade quantities are multiples of this
    has_oi: bool = False

    @property
    def segment(self) -> int:
        return self.token & 0xFF

    @property
    def is_index(self) -> bool:
        return self.segment == SEGMENT_INDICES


def default_universe(n: int = 50, seed: int = 7) -> list[SimInstrument]:
    """NIFTY 50 and NIFTY BANK, then NFO futures and options, then NSE stocks."""
    rng = np.random.default_rng(seed)
    out = [SimInstrument(256265, 2_412_035, 5), SimInstrument(260105, 5_198_040, 5)]
    i = 0
    while len(out) < n:
        kind = i % 3
        if kind == 0:     # an NFO option: small premium, lot 75, OI
            token = ((12_000_000 + i) << 8) | 2
            out.append(SimInstrument(token, int(rng.integers(500, 40_000)) // 5 * 5, 5, 75, True))
        elif kind == 1:   # an NFO future
            token = ((13_000_000 + i) << 8) | 2
            out.append(SimInstrument(token, int(rng.integers(50_000, 500_000)) // 10 * 10, 10,
                                     25, True))
        else:             # an NSE stock
            token = ((100_000 + i) << 8) | 1
            out.append(SimInstrument(token, int(rng.integers(10_000, 400_000)) // 5 * 5, 5))
        i += 1
    return out[:n]


_KIND_FIELDS = {
    KIND_LTP: (MODE_LTP, FIELD_LTP, 8),
    KIND_INDEX_QUOTE: (MODE_QUOTE, FIELD_LTP | FIELD_OHLC, 28),
    KIND_INDEX_FULL: (MODE_FULL, FIELD_LTP | FIELD_OHLC | FIELD_EXCHANGE_TIMESTAMP, 32),
    KIND_QUOTE: (MODE_QUOTE, FIELD_LTP | FIELD_OHLC | FIELD_QUOTE, 44),
    KIND_FULL: (MODE_FULL, 63, 184),
}
assert _KIND_FIELDS[KIND_FULL][1] == (FIELD_LTP | FIELD_OHLC | FIELD_QUOTE
                                      | FIELD_EXCHANGE_TIMESTAMP | FIELD_FULL | FIELD_DEPTH)


class KiteMarket:
    """Generates TICK_DTYPE rows; successive calls continue the same market."""

    def __init__(self, instruments: Sequence[SimInstrument], seed: int = 1,
                 start_time: int = 1_763_610_300):  # 2025-11-20 09:15 IST, epoch seconds
        if not instruments:
            raise ValueError("a market needs at least one instrument")
        self.instruments = list(instruments)
        self.rng = np.random.default_rng(seed)
        n = len(self.instruments)
        self.token = np.array([i.token for i in self.instruments], dtype=np.uint32)
        self.tick = np.array([i.tick for i in self.instruments], dtype=np.int64)
        self.lot = np.array([i.lot for i in self.instruments], dtype=np.int64)
        self.is_index = np.array([i.is_index for i in self.instruments])
        self.has_oi = np.array([i.has_oi for i in self.instruments])
        self.price = np.array([i.price for i in self.instruments], dtype=np.int64)
        self.open = self.price.copy()
        self.high = self.price.copy()
        self.low = self.price.copy()
        self.close = self.price.copy()  # yesterday's close: the opening price
        self.volume = np.zeros(n, dtype=np.int64)
        self.turnover = np.zeros(n, dtype=np.float64)
        self.oi = np.where(self.has_oi, self.rng.integers(100_000, 5_000_000, n), 0)
        self.oi_high = self.oi.copy()
        self.oi_low = self.oi.copy()
        self.bid_qty = self.rng.integers(1, 400, (n, 5)) * self.lot[:, None]
        self.ask_qty = self.rng.integers(1, 400, (n, 5)) * self.lot[:, None]
        self.bid_orders = self.rng.integers(1, 40, (n, 5))
        self.ask_orders = self.rng.integers(1, 40, (n, 5))
        self.time = start_time
        self.last_trade_time = np.full(n, start_time, dtype=np.int64)
        self.last_qty = self.lot.copy()
        self.total_qty = self.rng.integers(10_000, 1_000_000, (n, 2)) * self.lot[:, None]

    def ticks(self, count: int, kind: int = KIND_FULL, rate_per_instrument: float = 1.0,
              instruments: np.ndarray | None = None) -> np.ndarray:
        """``count`` ticks in arrival order. ``kind`` is the mode subscribed: indices get
        their index packet of that mode. About ``rate_per_instrument`` ticks per instrument
        per second of exchange time. ``instruments`` restricts which ones tick (indices into
        the universe)."""
        if kind not in _KIND_FIELDS:
            raise ValueError(f"unknown packet kind {kind}")
        rng = self.rng
        pool = np.arange(len(self.instruments)) if instruments is None else np.asarray(instruments)
        which = pool[rng.integers(0, len(pool), count)]
        out = np.zeros(count, dtype=TICK_DTYPE)
        seconds_per_tick = 1.0 / (rate_per_instrument * len(pool))
        clock = self.time + np.floor(np.arange(1, count + 1) * seconds_per_tick).astype(np.int64)
        # Per-tick random draws, vectorised; state is then advanced in one pass.
        steps = rng.choice(np.array([-2, -1, 0, 0, 0, 1, 2]), count)
        traded = rng.random(count) < 0.7
        trade_lots = rng.integers(1, 20, count)
        level_changes = rng.random((count, 2, 5)) < 0.25
        new_qty = rng.integers(1, 400, (count, 2, 5))
        new_orders = rng.integers(1, 40, (count, 2, 5))
        oi_steps = rng.integers(-50, 51, count)
        total_steps = rng.integers(-500, 501, (count, 2))
        for t in range(count):
            i = which[t]
            tick = self.tick[i]
            price = max(self.price[i] + steps[t] * tick, tick)
            self.price[i] = price
            if price > self.high[i]:
                self.high[i] = price
            if price < self.low[i]:
                self.low[i] = price
            if traded[t] and not self.is_index[i]:
                qty = trade_lots[t] * self.lot[i]
                self.last_qty[i] = qty
                self.volume[i] += qty
                self.turnover[i] += qty * price
                self.last_trade_time[i] = clock[t]
                if self.has_oi[i]:
                    oi = max(int(self.oi[i]) + int(oi_steps[t]) * int(self.lot[i]), 0)
                    self.oi[i] = oi
                    self.oi_high[i] = max(self.oi_high[i], oi)
                    self.oi_low[i] = min(self.oi_low[i], oi)
            self.total_qty[i] = np.maximum(self.total_qty[i] + total_steps[t] * self.lot[i], 0)
            changes = level_changes[t]
            if changes.any():
                lot = self.lot[i]
                self.bid_qty[i] = np.where(changes[0], new_qty[t, 0] * lot, self.bid_qty[i])
                self.ask_qty[i] = np.where(changes[1], new_qty[t, 1] * lot, self.ask_qty[i])
                self.bid_orders[i] = np.where(changes[0], new_orders[t, 0], self.bid_orders[i])
                self.ask_orders[i] = np.where(changes[1], new_orders[t, 1], self.ask_orders[i])
            self._fill(out[t:t + 1], i, kind, int(clock[t]))
        self.time = int(clock[-1]) if count else self.time
        return out

    def _fill(self, row: np.ndarray, i: int, kind: int, now: int) -> None:
        if self.is_index[i] and kind != KIND_LTP:
            kind = KIND_INDEX_QUOTE if kind == KIND_QUOTE else KIND_INDEX_FULL
        mode, fields, length = _KIND_FIELDS[kind]
        token = int(self.token[i])
        segment = token & 0xFF
        row["token"] = token
        row["segment"] = segment
        row["divisor"] = 10_000_000 if segment == 3 else 10_000 if segment in (6, 12) else 100
        row["tradable"] = segment != SEGMENT_INDICES
        row["kind"], row["mode"], row["fields"], row["packet_length"] = kind, mode, fields, length
        price = self.price[i]
        row["last_price"] = price
        if fields & FIELD_OHLC:
            row["open"], row["high"], row["low"], row["close"] = (
                self.open[i], self.high[i], self.low[i], self.close[i])
        if kind in (KIND_INDEX_QUOTE, KIND_INDEX_FULL):
            row["change"] = price - self.close[i]
        if fields & FIELD_EXCHANGE_TIMESTAMP:
            row["exchange_timestamp"] = now
        if fields & FIELD_QUOTE:
            row["last_quantity"] = self.last_qty[i]
            row["average_price"] = (int(self.turnover[i] / self.volume[i])
                                    if self.volume[i] else price)
            row["volume"] = self.volume[i]
            row["total_buy_quantity"], row["total_sell_quantity"] = self.total_qty[i]
        if fields & FIELD_FULL:
            row["last_trade_time"] = self.last_trade_time[i]
            row["oi"], row["oi_day_high"], row["oi_day_low"] = (
                self.oi[i], self.oi_high[i], self.oi_low[i])
        if fields & FIELD_DEPTH:
            tick = self.tick[i]
            levels = np.arange(5)
            row["bid_price"] = np.maximum(price - (levels + 1) * tick, tick)
            row["ask_price"] = price + (levels + 1) * tick
            row["bid_quantity"], row["ask_quantity"] = self.bid_qty[i], self.ask_qty[i]
            row["bid_orders"], row["ask_orders"] = self.bid_orders[i], self.ask_orders[i]


# Tick sizes the simulator uses, in paise, by kind of instrument.
UNIVERSE_TICKS = {"index": 5, "EQ": 5, "CE": 5, "PE": 5, "FUT": 10}


def universe_from_instruments(instruments, n: int | None = None) -> list[SimInstrument]:
    """SimInstruments for rows of an instrument master (``shrivenq.kite.instruments``
    ``Instrument`` objects or anything with the same attributes), in the master's order,
    the first ``n`` if given. Opening price: the row's ``last_price`` snapped to the tick
    (100.00 if the row has none); tick: ``UNIVERSE_TICKS``; lot: the row's lot size (1 for
    indices); open interest for futures and options."""
    out: list[SimInstrument] = []
    for ins in instruments:
        if n is not None and len(out) >= n:
            break
        token = int(ins.instrument_token)
        segment = token & 0xFF
        kind = ins.instrument_type
        if segment == SEGMENT_INDICES or getattr(ins, "segment", "") == "INDICES":
            kind = "index"
        tick = UNIVERSE_TICKS.get(kind, 5)
        divisor = 10_000_000 if segment == 3 else 10_000 if segment in (6, 12) else 100
        price = round(float(ins.last_price or 0.0) * divisor) if ins.last_price else 100 * divisor
        price = max(price // tick * tick, tick)
        out.append(SimInstrument(token, int(price), tick, max(int(ins.lot_size or 1), 1),
                                 has_oi=kind in ("FUT", "CE", "PE")))
    return out
