"""Book states as rows: the numpy form (``BOOK_DTYPE``), sampling at a fixed interval, and
writers for ``replay --out`` whose format follows the file's extension (.csv, .jsonl,
.parquet). Prices stay fixed-point in numpy; the writers divide by the instrument's divisor.
Each row's ``time`` is the receive time in IST: a timestamp in parquet, ISO 8601 text with
every nanosecond and the offset in CSV and JSONL; ``wall_ns`` holds it as ns since the epoch.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from shrivenq.errors import ConfigError, ReplayError
from shrivenq.replay.kite import ReplayResult, TickBatch
from shrivenq.timeutil import IST_OFFSET_NS, iso_ns

BOOK_DTYPE = np.dtype([
    ("wall_ns", "<i8"), ("token", "<u4"), ("divisor", "<u4"), ("feed_down", "?"),
    ("last_price", "<i4"), ("last_quantity", "<u4"), ("volume", "<u4"), ("oi", "<u4"),
    ("bid_price", "<i4", (5,)), ("bid_quantity", "<u4", (5,)), ("bid_orders", "<u2", (5,)),
    ("ask_price", "<i4", (5,)), ("ask_quantity", "<u4", (5,)), ("ask_orders", "<u2", (5,)),
])


def book_rows(books: np.ndarray, wall_ns: np.ndarray) -> np.ndarray:
    """BOOK_DTYPE rows from per-tick book states (TICK_DTYPE) and their times (a tick was
    received: ``feed_down`` is False)."""
    out = np.empty(len(books), dtype=BOOK_DTYPE)
    out["wall_ns"] = wall_ns
    out["feed_down"] = False
    for name in BOOK_DTYPE.names:
        if name not in ("wall_ns", "feed_down"):
            out[name] = books[name]
    return out


def conns_down_at(at: int, res: ReplayResult | None) -> set[int]:
    """The connections down at ``at`` as far as the replay has read: recorded outages
    (GAP records, and outages still open at the end of the read) and connections lost and
    not yet back."""
    if res is None:
        return set()
    down = {conn for conn, (since, _) in res.conn_down.items() if since <= at}
    for gap in res.gaps:
        lo, hi = gap.get("from_ns"), gap.get("to_ns")
        if isinstance(lo, int) and lo <= at and (hi is None or at < hi):
            down.add(gap.get("conn"))
    return down


def grid_start(first_ns: int, every_ns: int) -> int:
    """The sampling grid point at or before ``first_ns`` on the IST clock, counted from that
    day's IST midnight: whole seconds for 1s, whole minutes for 1m, 09:15, 09:20, ... for 5m,
    the same clock times every day even for 7m. Grids of reads of the same day line up."""
    day = 86_400 * 10**9
    midnight = (first_ns + IST_OFFSET_NS) // day * day - IST_OFFSET_NS
    return midnight + (first_ns - midnight) // every_ns * every_ns


def sample(batches: Iterable[TickBatch], start_ns: int | None, end_ns: int | None,
           every_ns: int, result: Callable[[], ReplayResult | None] = lambda: None
           ) -> Iterator[np.ndarray]:
    """Every instrument's latest book at start, start+every, ... (< end; without an end, up to
    the last tick): one BOOK_DTYPE row per instrument whose book is known by then, stamped
    with the sampling time. Without a start the grid is on the IST clock (``grid_start``)
    from the first tick. ``result()`` gives the replay's result (asked for once the first
    batch is in, or at the end when the range held no tick, when replay has filled it): its
    ``start_books`` are the books as they stood at the start, so a range in which an
    instrument never ticks still samples its book.

    ``feed_down`` marks a sample taken while the connection the instrument's latest tick
    came on was down (``conns_down_at``): its book is the last one received before the
    outage, not the market's. A book seeded from the start books, whose connection is not
    known, is marked while any connection is down.

    Books belong to their capture session, as in replay, which starts each session with
    none: a session's books are sampled up to its stop record (up to its last tick if it has
    none and another session follows), never after, and none of them in a later session.
    A sample is emitted only once a later tick or the end of the read shows it complete, so
    this holds whatever the start."""
    if every_ns <= 0:
        raise ConfigError("the sampling interval must be positive")
    latest: dict[int, np.ndarray] = {}
    conn_of: dict[int, int] = {}        # token -> connection of its latest tick (-1: unknown)
    boundary = start_ns
    last_tick = start_ns
    end = end_ns if end_ns is not None else 2**63 - 1

    def emit(at: int) -> np.ndarray:
        tokens = sorted(latest)
        rows = np.array([latest[t] for t in tokens], dtype=BOOK_DTYPE)
        rows["wall_ns"] = at
        down = conns_down_at(at, result())
        if down:
            rows["feed_down"] = [conn_of[t] in down or (conn_of[t] < 0) for t in tokens]
        return rows

    session = None

    def stop_of(name: str | None) -> int | None:
        res = result()
        return None if res is None or name is None else res.stops.get(name)

    def seed() -> None:
        nonlocal session
        res = result() if start_ns is not None else None
        initial = res.start_books if res is not None else None
        if initial is not None and len(initial):
            session = res.start_session
            for row in book_rows(initial, np.full(len(initial), start_ns)):
                latest[int(row["token"])] = row
                conn_of[int(row["token"])] = -1

    seeded = False
    for batch in batches:
        if not seeded:
            seeded = True
            seed()
            if boundary is None:
                boundary = last_tick = grid_start(int(batch.wall_ns[0]), every_ns)
        if batch.session != session:
            if latest and session is not None:
                # the old session's books hold up to its stop, if it recorded one
                stop = stop_of(session)
                while stop is not None and boundary <= stop and boundary < end:
                    yield emit(boundary)
                    boundary += every_ns
                latest.clear()
                conn_of.clear()
            session = batch.session
        rows = book_rows(batch.books, batch.wall_ns)
        conns, tokens = batch.conn.tolist(), rows["token"].tolist()

        def take(lo: int, hi: int) -> None:     # rows[lo:hi] are each one's latest book
            for k in range(lo, hi):
                latest[tokens[k]] = rows[k]
                conn_of[tokens[k]] = conns[k]

        last_tick = max(last_tick, int(rows["wall_ns"][-1]))
        i = 0
        while boundary < end and i < len(rows):
            j = int(np.searchsorted(rows["wall_ns"], boundary, side="right"))
            take(i, j)
            i = j
            if i < len(rows):  # the next tick is past the boundary: the boundary is complete
                if latest:
                    yield emit(boundary)
                boundary += every_ns
        take(i, len(rows))
    if not seeded:
        if start_ns is None:
            return
        seed()
    end = end_ns if end_ns is not None else last_tick + 1
    stop = stop_of(session)
    if stop is not None:
        end = min(end, stop + 1)            # nothing was recorded after the session stopped
    while boundary < end and latest:
        yield emit(boundary)
        boundary += every_ns


def _columns(rows: np.ndarray, names: dict[int, str]) -> dict[str, np.ndarray]:
    """The output columns of BOOK_DTYPE rows, in file order, computed a column at a time:
    ``time`` as ISO 8601 text (``timeutil.iso_ns``), ``symbol`` from ``names``, prices
    divided by their divisor (1 where it is 0) as float64, every other number as int64. Row
    by row this was 70 us a tick, most of the cost of ``replay --out``."""
    wall = rows["wall_ns"].astype(np.int64)
    # The last 5.5 hours of int64 (April 2262) would wrap when shifted to IST: those few
    # take iso_ns, which does not.
    late = wall > np.iinfo(np.int64).max - IST_OFFSET_NS
    local = (np.where(late, 0, wall) + IST_OFFSET_NS).astype("datetime64[ns]")
    time = np.char.add(np.datetime_as_string(local, unit="ns"), IST_SUFFIX).astype(object)
    if late.any():
        time[late] = [iso_ns(int(w)) for w in wall[late]]
    tokens = rows["token"].astype(np.int64)
    distinct, which = np.unique(tokens, return_inverse=True)
    symbols = np.array([names.get(int(t), "") for t in distinct], dtype=object)[which]
    div = rows["divisor"].astype(np.float64)
    div[div == 0] = 1.0
    cols = {"time": time, "wall_ns": wall, "token": tokens, "symbol": symbols,
            "feed_down": rows["feed_down"],
            "last_price": rows["last_price"].astype(np.float64) / div,
            "last_quantity": rows["last_quantity"].astype(np.int64),
            "volume": rows["volume"].astype(np.int64), "oi": rows["oi"].astype(np.int64)}
    for side in ("bid", "ask"):
        prices = rows[f"{side}_price"].astype(np.float64) / div[:, None]
        quantities = rows[f"{side}_quantity"].astype(np.int64)
        for level in range(5):
            cols[f"{side}_price_{level + 1}"] = prices[:, level]
            cols[f"{side}_qty_{level + 1}"] = quantities[:, level]
    return cols


IST_SUFFIX = iso_ns(0)[-6:]       # "+05:30"

PARQUET_TZ = "Asia/Kolkata"


class BookWriter:
    """Streams BOOK_DTYPE rows to ``path`` in the format its extension names. Rows go to a
    hidden file beside ``path`` that replaces it only at ``close(complete=True)``: a replay
    that fails part-way leaves an earlier, whole ``path`` as it was, never a partial file
    that would read as a whole one."""

    FORMATS = (".csv", ".jsonl", ".parquet")

    def __init__(self, path: str | Path, names: dict[int, str] | None = None):
        self.path = Path(path)
        self.names = names if names is not None else {}   # may fill as replay reads
        self.format = self.path.suffix.lower()
        if self.format not in self.FORMATS:
            raise ConfigError(f"--out {self.path}: unknown format {self.format or '(none)'}; "
                              f"use one of {', '.join(self.FORMATS)}")
        if not self.path.parent.is_dir():
            what = "is not a directory" if self.path.parent.exists() else "does not exist"
            raise ConfigError(f"--out {self.path}: {self.path.parent} {what}")
        self.rows = 0
        self._pq = None
        self._csv = None
        if self.format == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ConfigError("parquet output needs pyarrow: pip install pyarrow") from None
        self._partial = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        try:
            if self.format == ".parquet":
                self._file = None
                self._partial.touch()      # fails now, not after the replay, if unwritable
            else:
                self._file = open(self._partial, "w", newline="")
        except OSError as exc:
            raise ConfigError(f"--out {self.path}: {exc.strerror}") from None

    def write(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        try:
            self._write(rows)
        except OSError as exc:      # a full disk, a quota, a vanished directory
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> ReplayError:
        kept = (f"{self.path} was left as it was" if self.path.exists()
                else f"nothing was written to {self.path}")
        return ReplayError(f"--out {self.path}: writing failed: {exc.strerror or exc}; {kept}")

    def _write(self, rows: np.ndarray) -> None:
        cols = _columns(rows, self.names)
        self.rows += len(rows)
        if self.format == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # A real timestamp column (IST), not the text the other formats carry.
            arrays = {name: pa.array(values) for name, values in cols.items()
                      if name != "time"}
            table = pa.table({"time": pa.array(cols["wall_ns"],
                                               pa.timestamp("ns", tz=PARQUET_TZ)), **arrays})
            if self._pq is None:
                self._pq = pq.ParquetWriter(self._partial, table.schema)
            self._pq.write_table(table)
            return
        names = list(cols)
        records = zip(*(values.tolist() for values in cols.values()))
        if self.format == ".jsonl":
            self._file.writelines(json.dumps(dict(zip(names, r))) + "\n" for r in records)
        else:
            if self._csv is None:
                self._csv = csv.writer(self._file)
                self._csv.writerow(names)
            self._csv.writerows(records)

    def close(self, complete: bool = True) -> None:
        """Finish the file and put it in place; ``complete=False`` (the replay failed):
        drop what was written and leave ``path`` untouched."""
        try:
            if self._file is not None:
                self._file.close()
            if self._pq is not None:
                self._pq.close()
            elif self.format == ".parquet" and not self.rows and complete:
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({"time": pa.array([], pa.timestamp("ns", tz=PARQUET_TZ))}),
                               self._partial)
        except OSError as exc:
            if not complete:
                return      # dropped anyway (finally); the error that stopped it is reported
            complete = False
            raise self._failed(exc) from None
        except BaseException:
            complete = False
            raise
        finally:
            if complete:
                os.replace(self._partial, self.path)
            else:
                self._partial.unlink(missing_ok=True)
