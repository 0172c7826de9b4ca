"""The notebook API: ``shrivenq.open(data_dir)``.

    ds = shrivenq.open("data")
    ticks = ds.ticks(start="2026-11-20T09:15", end="2026-11-20T09:20", symbols=["NIFTY 50"])
    df = ds.to_pandas(symbols=["NIFTY BANK"])         # pandas is imported only here
    books = ds.books(symbols=["NIFTY 50"], every="1s")  # like replay --out
    for tick, book in ds.replay(symbols=["NIFTY 50"]):  # one pair per tick, for strategies
        ...

Times are ISO strings (IST unless they carry a zone), datetimes, or ns since the epoch.
Symbols resolve through the instrument master (the cached one under ``cache_dir``, else the
sample shipped with shrivenq, which covers the simulator), then through the names the capture
recorded on its day (so an expired contract is still found by name); tokens can be given
directly. Labels (``to_pandas``' symbol) prefer the recorded names.
Memory follows the rows asked for: the WAL is read block by block, skipping blocks outside
the time range, and the records of other instruments are dropped as each block is read
(blocks are not skipped by instrument: the WAL keeps no per-block instrument index, so
asking for one symbol reads every block of the range).

Damaged or missing WAL data raises ``WalCorruptError`` naming it. ``shrivenq.open(data_dir,
on_corrupt="skip")`` reads past it instead: each read then lists what it left out in
``ds.skipped`` and warns (``ShrivenqDataWarning``), so a result with holes never passes for
a whole one. Feed gaps the capture recorded (a lost connection, a reconnect) are listed in
``ds.gaps`` after each read that spans them, with the same warning. A gap is recorded when
its connection comes back, so a read looks at the records just past its end for it: a read
that ends during an outage, or lies wholly inside one, lists the whole gap. An outage the
log ends in is listed from the disconnect on, still open (``to_ns`` None). With several
connections, an outage of one whose GAP comes after other connections' ticks is found only
from its disconnect, when that lies in the range read.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from shrivenq.errors import ConfigError, ShrivenqDataWarning, WalError
from shrivenq.kite import (FIELD_DEPTH, FIELD_EXCHANGE_TIMESTAMP, FIELD_FULL, FIELD_LTP,
                           FIELD_OHLC, FIELD_QUOTE, TICK_DTYPE)
from shrivenq.replay.kite import KiteReplay, gap_overlaps, venue_dir
from shrivenq.replay.output import BOOK_DTYPE, book_rows, sample
from shrivenq.wal import Kind, WalReader
from shrivenq.wal.records import decode_control, session_names
from shrivenq.timeutil import IST, format_ns, parse_datetime, parse_duration_ns, to_ns

__all__ = ["Dataset", "ShrivenqDataWarning", "TIMED_TICK_DTYPE", "time_ns"]

log = logging.getLogger("shrivenq.dataset")

#: ``ticks()`` rows: the receive time and connection, then every TICK_DTYPE column.
TIMED_TICK_DTYPE = np.dtype([("wall_ns", "<i8"), ("conn", "<u4")]
                            + [(name, TICK_DTYPE.fields[name][0]) for name in TICK_DTYPE.names])

TimeArg = str | datetime | int | None

#: to_pandas' column groups and the FIELD_* flag that says a packet carried them.
_FIELD_GROUPS = {"ltp": FIELD_LTP, "ohlc": FIELD_OHLC, "quote": FIELD_QUOTE, "full": FIELD_FULL,
                 "exchange_time": FIELD_EXCHANGE_TIMESTAMP, "depth": FIELD_DEPTH}


def time_ns(value: TimeArg, what: str) -> int | None:
    """A time argument as ns since the epoch. Strings, datetimes and pandas Timestamps
    without a zone are IST; numpy datetime64 values count from the epoch in UTC (what a
    DataFrame's ``index.values`` holds), as do plain integers (ns)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{what} {value!r} is not a time")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ConfigError(f"{what} is NaT, not a time")
        # whole seconds, then the rest: a plain cast to ns wraps silently past 2262
        whole = value.astype("datetime64[s]")
        ns = int(whole.astype(np.int64)) * 10**9 \
            + int((value - whole).astype("timedelta64[ns]").astype(np.int64))
        if not -2**63 <= ns < 2**63:
            raise ConfigError(f"{what} {value} is outside the times shrivenq can hold "
                              "(1677-2262)")
        return ns
    if hasattr(value, "value") and hasattr(value, "tz_localize"):  # a pandas Timestamp
        if value != value:  # NaT
            raise ConfigError(f"{what} is NaT, not a time")
        # .value keeps the nanoseconds that a datetime would drop
        return int((value if value.tzinfo else value.tz_localize(IST)).value)
    if isinstance(value, datetime):
        return to_ns(value if value.tzinfo else value.replace(tzinfo=IST))
    if isinstance(value, str):
        return to_ns(parse_datetime(value, what))
    raise ConfigError(f"{what} {value!r}: give a time as an ISO string (IST unless it carries "
                      "a zone), a datetime, a numpy datetime64 (UTC) or ns since the epoch")


class Dataset:
    def __init__(self, data_dir: str | Path = "data", cache_dir: str | Path = "cache",
                 on_corrupt: str = "raise"):
        if on_corrupt not in ("raise", "skip"):
            raise ConfigError(f"on_corrupt={on_corrupt!r}: use 'raise' or 'skip'")
        self.data_dir = Path(data_dir)
        self.vdir = venue_dir(self.data_dir)
        self.cache_dir = Path(cache_dir)
        self.on_corrupt = on_corrupt
        #: What the last read left out (on_corrupt="skip"), as messages naming each part.
        self.skipped: list[str] = []
        #: Feed gaps the capture recorded within the last read's range: dicts with conn,
        #: from_ns, to_ns, reason and session, as ``replay`` reports them.
        self.gaps: list[dict] = []
        self.notes: list[str] = []      # what the last read did differently, and why
        self._master = None
        # Names the capture recorded (token -> tradingsymbol on the recording day): filled
        # by every read that passes a session start, and by one scan of them all when a
        # symbol or a label is not otherwise known.
        self._recorded: dict[int, str] = {}
        self._by_name: dict[str, int] = {}   # every recorded name, also those a token shed
        self._scanned = False

    def _replay(self) -> KiteReplay:
        return KiteReplay(self.vdir, on_corrupt=self.on_corrupt, names=self._recorded)

    def _scan_recorded_names(self) -> None:
        """Every session start's names, read once (it decodes the whole ticks stream)."""
        if self._scanned:
            return
        self._scanned = True
        for batch in WalReader(self.vdir, "ticks", kinds=[Kind.SESSION_START],
                               on_corrupt="skip"):
            for i in range(len(batch)):
                try:
                    doc = decode_control(Kind.SESSION_START, int(batch.version[i]),
                                         batch.payload(i))
                except WalError:  # a damaged record: replay names it when it reads it
                    continue
                names = session_names(doc)
                self._recorded.update(names)
                self._by_name.update((name, token) for token, name in names.items())

    def _batches(self, replay: KiteReplay, start_ns: int | None, end_ns: int | None, *args,
                 **kw):
        """replay.ticks(...), then what it skipped into ``skipped`` and the feed gaps of the
        range into ``gaps`` (each public read then calls _warn_holes)."""
        self.skipped, self.gaps, self.notes = [], [], []
        yield from replay.ticks(start_ns, end_ns, *args, **kw)
        self.skipped = list(replay.result.skipped)
        self.notes = list(replay.result.notes)   # e.g. a seek started from an earlier snapshot
        self.gaps = [g for g in replay.result.gaps if gap_overlaps(g, start_ns, end_ns)]

    def _warn_holes(self) -> None:
        """A warning for each kind of hole in the last read, pointing at the caller of the
        public method: a result with holes never passes for a whole one."""
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} damaged or missing part(s) of the WAL left "
                          f"out of this read (ds.skipped lists them): {self.skipped[0]}",
                          ShrivenqDataWarning, stacklevel=3)
        if self.gaps:
            first = self.gaps[0]
            warnings.warn(f"{len(self.gaps)} feed gap(s) recorded in this range (ds.gaps "
                          f"lists them); the first from {format_ns(first.get('from_ns'))} to "
                          f"{format_ns(first.get('to_ns'))} IST ({first.get('reason')})",
                          ShrivenqDataWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"shrivenq.Dataset({str(self.data_dir)!r})"

    @property
    def instruments(self):
        if self._master is None:
            from shrivenq.kite.instruments import load_master

            self._master = load_master(self.cache_dir, fallback_sample=True)
        return self._master

    def tokens_for(self, symbols: Sequence[str] | str | None = None,
                   tokens: Sequence[int] | int | None = None) -> list[int] | None:
        """Instrument tokens for ``symbols`` (names; one string may list several, comma
        separated, as on the command line) and ``tokens`` (one or many)."""
        if symbols is None and tokens is None:
            return None
        if isinstance(symbols, str):
            symbols = [s.strip() for s in symbols.split(",") if s.strip()]
        if isinstance(tokens, (int, np.integer)):
            tokens = [tokens]
        elif isinstance(tokens, str):           # "256265,260105", as on the command line
            tokens = [t.strip() for t in tokens.split(",") if t.strip()]
        elif isinstance(tokens, np.ndarray):
            tokens = tokens.ravel().tolist()
        if symbols is not None and not len(symbols):
            raise ConfigError("symbols is empty: name at least one, or leave it out for all")
        try:
            out = [int(t) for t in tokens or []]
        except (TypeError, ValueError):
            raise ConfigError(f"tokens {tokens!r}: give instrument tokens as integers") from None
        if symbols:
            out += self._resolve(list(symbols))
        bad = [t for t in out if not 0 <= t < 1 << 32]
        if bad:
            # Kite's tokens are u32: anything else names no instrument (and numpy would
            # overflow on it further in)
            raise ConfigError(f"instrument token {bad[0]} is out of range (0 to {(1 << 32) - 1})")
        return out

    def _resolve(self, symbols: list) -> list[int]:
        """Tokens of symbols: through the instrument master, then, for what it lacks (an
        expired contract), through the names the capture recorded on its days."""
        try:
            return [ins.token for ins in self.instruments.resolve(symbols)]
        except ConfigError as err:
            problem = err
        out = []
        for sym in symbols:
            try:
                out.append(self.instruments.resolve([sym])[0].token)
                continue
            except ConfigError:
                pass
            text = str(sym).strip()
            if text.isdigit():                 # a token the master lacks: taken as given
                out.append(int(text))
                continue
            self._scan_recorded_names()
            bare = text.split(":", 1)[1] if ":" in text else text
            token = self._by_name.get(bare)
            if token is None:
                raise problem                  # the master's message, naming each symbol
            out.append(token)
        return out

    def names(self) -> dict[int, str]:
        """Token -> tradingsymbol: the names the capture recorded where known (the recording
        day's), else the instrument master's."""
        try:
            master = {ins.token: ins.tradingsymbol for ins in self.instruments}
        except Exception:  # a master is a nicety for labels, never a reason to fail
            master = {}
        return {**master, **self._recorded}

    def _range(self, start: TimeArg, end: TimeArg) -> tuple[int | None, int | None]:
        start_ns, end_ns = time_ns(start, "start"), time_ns(end, "end")
        if start_ns is not None and end_ns is not None and start_ns >= end_ns:
            raise ConfigError("start must be before end")
        return start_ns, end_ns

    def ticks(self, start: TimeArg = None, end: TimeArg = None,
              symbols: Sequence[str] | None = None, tokens: Sequence[int] | None = None
              ) -> np.ndarray:
        """Parsed ticks with their receive times, as one TIMED_TICK_DTYPE array."""
        rows = self._ticks(start, end, symbols, tokens)
        self._warn_holes()
        return rows

    def _ticks(self, start: TimeArg, end: TimeArg, symbols, tokens) -> np.ndarray:
        start_ns, end_ns = self._range(start, end)
        parts = []
        for batch in self._batches(self._replay(), start_ns, end_ns,
                                   self.tokens_for(symbols, tokens)):
            parts.append(_timed(batch))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=TIMED_TICK_DTYPE)

    def to_pandas(self, start: TimeArg = None, end: TimeArg = None,
                  symbols: Sequence[str] | None = None, tokens: Sequence[int] | None = None):
        """Ticks as a DataFrame indexed by receive time (IST); prices divided into floats;
        depth as bid_price_1..5, bid_qty_1..5, ask_price_1..5, ask_qty_1..5. A field the
        packet did not carry (an index has no depth, an ltp packet no volume) is missing:
        NaN for prices, NaT for times, <NA> for quantities (pandas' nullable integers)."""
        import pandas as pd

        rows = self._ticks(start, end, symbols, tokens)
        self._warn_holes()               # pointing at the caller's to_pandas line
        names = self.names()
        if not self._scanned and not all(int(t) in names for t in np.unique(rows["token"])):
            self._scan_recorded_names()      # a read from mid-session passes no session start
            names = self.names()
        div = rows["divisor"].astype(np.float64)
        carried = {group: (rows["fields"] & flag) != 0 for group, flag in _FIELD_GROUPS.items()}

        def price(values, group):
            return np.where(carried[group], values / div, np.nan)

        def quantity(values, group):
            return pd.arrays.IntegerArray(values.astype(np.int64), ~carried[group])

        cols: dict[str, object] = {
            "token": rows["token"], "symbol": [names.get(int(t), "") for t in rows["token"]],
            "conn": rows["conn"], "kind": rows["kind"],
        }
        cols["last_price"] = price(rows["last_price"], "ltp")
        cols["average_price"] = price(rows["average_price"], "quote")
        for name in ("open", "high", "low", "close"):
            cols[name] = price(rows[name], "ohlc")
        for name in ("last_quantity", "volume", "total_buy_quantity", "total_sell_quantity"):
            cols[name] = quantity(rows[name], "quote")
        for name in ("oi", "oi_day_high", "oi_day_low"):
            cols[name] = quantity(rows[name], "full")
        for name, group in (("last_trade_time", "full"), ("exchange_timestamp", "exchange_time")):
            stamp = pd.to_datetime(rows[name].astype(np.int64), unit="s", utc=True)
            cols[name] = stamp.where(carried[group]).tz_convert("Asia/Kolkata")
        for side in ("bid", "ask"):
            for level in range(5):
                cols[f"{side}_price_{level + 1}"] = price(rows[f"{side}_price"][:, level], "depth")
                cols[f"{side}_qty_{level + 1}"] = quantity(rows[f"{side}_quantity"][:, level],
                                                           "depth")
        index = pd.to_datetime(rows["wall_ns"], unit="ns", utc=True).tz_convert("Asia/Kolkata")
        return pd.DataFrame(cols, index=pd.Index(index, name="time"))

    def books(self, start: TimeArg = None, end: TimeArg = None,
              symbols: Sequence[str] | None = None, tokens: Sequence[int] | None = None,
              every: str | int | None = None) -> np.ndarray:
        """Book states (BOOK_DTYPE): after every tick, or sampled ``every`` ('1s', '5m', a
        timedelta or ns) at start, start+every, ... (without a start, on the IST clock from
        the first tick: whole seconds, whole minutes), each instrument's book as it stood,
        also in a range where it never ticks. ``feed_down`` marks a sample taken while the
        connection the instrument's ticks came on was down (its book may be stale)."""
        start_ns, end_ns = self._range(start, end)
        replay = self._replay()
        batches = self._batches(replay, start_ns, end_ns, self.tokens_for(symbols, tokens),
                                books=True)
        if every is None:
            parts = [book_rows(b.books, b.wall_ns) for b in batches]
        else:
            parts = list(sample(batches, start_ns, end_ns, parse_duration_ns(every, "every"),
                                lambda: replay.result))
        self._warn_holes()
        return np.concatenate(parts) if parts else np.zeros(0, dtype=BOOK_DTYPE)

    def replay(self, start: TimeArg = None, end: TimeArg = None,
               symbols: Sequence[str] | None = None, tokens: Sequence[int] | None = None
               ) -> Iterator[tuple[np.void, np.void]]:
        """(tick, book) per tick, in order: a TIMED_TICK_DTYPE row and the instrument's
        BOOK_DTYPE book right after it."""
        start_ns, end_ns = self._range(start, end)
        for batch in self._batches(self._replay(), start_ns, end_ns,
                                   self.tokens_for(symbols, tokens), books=True):
            yield from zip(_timed(batch), book_rows(batch.books, batch.wall_ns))
        self._warn_holes()


def _timed(batch) -> np.ndarray:
    """A TickBatch's rows with their receive times and connections (TIMED_TICK_DTYPE)."""
    out = np.empty(len(batch.rows), dtype=TIMED_TICK_DTYPE)
    out["wall_ns"], out["conn"] = batch.wall_ns, batch.conn
    for name in TICK_DTYPE.names:
        out[name] = batch.rows[name]
    return out
