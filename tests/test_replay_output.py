"""``replay --out`` rows, computed a column at a time, against the plain row-by-row twin
(``replay.reference``, the code they replaced): the same keys in the same order, the same
values and the same Python types, so CSV, JSONL and parquet files are what they were."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from shrivenq.replay.output import BOOK_DTYPE, BookWriter, _columns
from shrivenq.replay.reference import reference_rows


def random_rows(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros(n, dtype=BOOK_DTYPE)
    rows["wall_ns"] = rng.integers(-10**17, 2**62, n)      # 1966 to 2116
    edges = [2**63 - 1, 2**63 - 19_800 * 10**9, 2**63 - 19_800 * 10**9 - 1, -2**63]
    rows["wall_ns"][:4] = edges[:n]      # int64's ends: the top wraps when shifted to IST
    rows["token"] = rng.choice([256265, 260105, 2**32 - 1, 0, 12345], n)
    rows["divisor"] = rng.choice([0, 1, 100, 10_000, 10_000_000, 2**32 - 1], n)
    rows["feed_down"] = rng.random(n) < 0.2
    for name in ("last_price", "bid_price", "ask_price"):
        rows[name] = rng.integers(-2**31, 2**31, rows[name].shape)
    for name in ("last_quantity", "volume", "oi", "bid_quantity", "ask_quantity"):
        rows[name] = rng.integers(0, 2**32, rows[name].shape)
    return rows


NAMES = {256265: "NIFTY 50", 260105: "NIFTY BANK", 0: "ZERO"}


def as_dicts(cols: dict[str, np.ndarray]) -> list[dict]:
    keys = list(cols)
    return [dict(zip(keys, r)) for r in zip(*(v.tolist() for v in cols.values()))]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 300))
def test_columns_equal_the_row_by_row_twin_value_type_and_order(seed, n):
    rows = random_rows(seed, n)
    ours, theirs = as_dicts(_columns(rows, NAMES)), reference_rows(rows, NAMES)
    assert [list(r) for r in ours] == [list(r) for r in theirs]
    assert ours == theirs
    assert [[type(v) for v in r.values()] for r in ours] == \
        [[type(v) for v in r.values()] for r in theirs]


def test_files_are_what_the_row_by_row_writer_made(tmp_path):
    import pyarrow as pa

    rows = random_rows(7, 500)
    flat = reference_rows(rows, NAMES)
    for fmt in (".csv", ".jsonl", ".parquet"):
        w = BookWriter(tmp_path / f"books{fmt}", NAMES)
        w.write(rows[:200])
        w.write(rows[200:])
        w.close()
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    assert (tmp_path / "books.csv").read_bytes() == text.getvalue().encode()
    assert (tmp_path / "books.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in flat)
    table = pa.Table.from_pylist(flat)
    table = table.set_column(0, "time", pa.array(rows["wall_ns"].astype(np.int64),
                                                 pa.timestamp("ns", tz="Asia/Kolkata")))
    got = pq.read_table(tmp_path / "books.parquet")
    assert got.schema == table.schema
    assert got.equals(table)
