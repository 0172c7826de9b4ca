"""Replay: deterministic, verified against every snapshot across reconnect gaps and segment
rotations, seeking from a snapshot equals replaying from the start, and bad requests get a
clear message and exit code."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest
from typer.testing import CliRunner

import shrivenq
from shrivenq.books.snapshot import encode_kite_snapshot
from shrivenq.capture.kite import KiteCapture, KiteCaptureSettings
from shrivenq.cli import app
from shrivenq.errors import ConfigError, WalCorruptError
from shrivenq.kite import KIND_FULL, KIND_LTP, frame_keys
from shrivenq.kite.wire import encode_frame
from shrivenq.replay.kite import KiteReplay
from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, KiteSimServer
from shrivenq.sim.market import KiteMarket, default_universe
from shrivenq.timeutil import IST, format_ns
from shrivenq.wal import Kind, WalReader, WalWriter, read_wal
from shrivenq.wal import records as R
from shrivenq.wal.segment import open_segment

NIFTY, BANKNIFTY = 256265, 260105


async def _until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def capture(path: Path, capture_cls=KiteCapture, drop=True, seconds=3.0) -> None:
    """A few seconds of 40 instruments in mixed modes, snapshots every 0.25 s, 64 KiB
    segments (so it rotates), and a dropped connection in the middle."""
    async def main():
        async with KiteSimServer(rate=150, frame_interval=0.02, instruments=60) as sim:
            universe = [ins.token for ins in sim.universe][:40]
            modes = {t: ("full", "quote", "ltp")[i % 3] for i, t in enumerate(universe)}
            modes[NIFTY] = modes[BANKNIFTY] = "full"
            cap = capture_cls(KiteCaptureSettings(
                modes, path, DEMO_API_KEY, DEMO_ACCESS_TOKEN, ws_root=sim.ws_url,
                snapshot_interval=0.25, segment_bytes=64 * 1024, watchdog=1.0))
            stop = asyncio.Event()
            task = asyncio.create_task(cap.run(stop))
            await asyncio.sleep(seconds / 2)
            if drop:
                sim.drop()
                await _until(lambda: len(sim.connections) == 2)
            await asyncio.sleep(seconds / 2)
            stop.set()
            await task
    asyncio.run(main())


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("capture")
    capture(path)
    return path


def cli(*args):
    return CliRunner().invoke(app, ["replay", *map(str, args)], catch_exceptions=False)


def all_books(path, **kw):
    batches = list(KiteReplay(path).ticks(books=True, **kw))
    return (np.concatenate([b.books for b in batches]), np.concatenate([b.wall_ns for b in batches]))


def test_the_capture_spans_rotations_a_gap_and_many_snapshots(day):
    segments = list((day / "kite").glob("*/ticks/*.wal"))
    kinds = read_wal(day / "kite", "ticks").kind
    assert len(segments) >= 3
    assert (kinds == Kind.GAP).sum() == 1 and (kinds == Kind.SNAPSHOT_MARK).sum() >= 8


def test_verify_passes_across_the_whole_capture(day):
    result = cli("--data-dir", day, "--verify")
    assert result.exit_code == 0, result.output
    assert "verified: all" in result.output and "GAPS: 1 span" in result.output
    replay = KiteReplay(day)
    for _ in replay.ticks(verify=True):
        pass
    assert replay.result.snapshots_checked >= 8 and not replay.result.mismatches


def test_replaying_twice_writes_identical_files(day, tmp_path):
    for fmt in ("csv", "jsonl", "parquet"):
        first, second = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        assert cli("--data-dir", day, "--out", first).exit_code == 0
        assert cli("--data-dir", day, "--out", second).exit_code == 0
        assert first.read_bytes() == second.read_bytes() and first.stat().st_size > 1000


def test_decoding_blocks_ahead_on_threads_replays_the_very_same_ticks_and_books(day):
    def run(workers):
        replay = KiteReplay(day, workers=workers)
        batches = list(replay.ticks(books=True, verify=True))
        return replay.result, [(b.rows.tobytes(), b.wall_ns.tobytes(), b.books.tobytes())
                               for b in batches]

    (one, ticks_one), (three, ticks_three) = run(1), run(3)
    assert ticks_one == ticks_three and len(ticks_one) > 5
    assert (one.ticks, one.snapshots_checked, one.gaps) == (three.ticks,
                                                              three.snapshots_checked, three.gaps)
    assert not one.mismatches and not three.mismatches


def test_frames_decoded_straight_from_blocks_replay_as_unpacking_and_parsing_them(
        day, tmp_path, monkeypatch):
    """Replay decodes a block's frames straight to rows (tick_delta.unpack_ticks); the
    other path unpacks the frames' bytes and parses them. Held to each other over the
    whole capture, and over a WAL whose malformed frames force the other path."""
    import shrivenq.replay.kite as replay_kite

    direct_blocks = []

    def counted(cols):
        out = real(cols)
        direct_blocks.append(out is not None)
        return out

    def run(path, **kw):
        replay = KiteReplay(path, workers=1)
        batches = list(replay.ticks(books=True, verify=True, **kw))
        res = replay.result
        return ((res.ticks, res.bad_frames, res.snapshots_checked, res.mismatches, res.gaps,
                 res.instruments),
                [(b.rows.tobytes(), b.wall_ns.tobytes(), b.conn.tobytes(), b.books.tobytes())
                 for b in batches])

    real = replay_kite._rows_of_block
    monkeypatch.setattr(replay_kite, "_rows_of_block", counted)
    direct = run(day)
    start = int(next(iter(WalReader(day / "kite", "ticks", workers=1))).wall_ns[-1])
    direct_from = run(day, start_ns=start, tokens=[256265])
    assert direct_blocks and all(direct_blocks)
    monkeypatch.setattr(replay_kite, "_rows_of_block", lambda cols: None)
    assert run(day) == direct and direct[0][0] > 1000
    assert run(day, start_ns=start, tokens=[256265]) == direct_from

    # A block with malformed frames among good ones takes the unpack-and-parse path and
    # still counts them, next to blocks that take the direct path.
    rows = KiteMarket(default_universe(5), seed=2).ticks(600, kind=KIND_FULL)
    t0 = 1_763_610_300_000_000_000
    with WalWriter(tmp_path, "kite", "ticks", tz=IST, block_bytes=30_000) as w:
        w.append(*R.session_start("s", "kite", "test", []), t0, 0)
        for i in range(300):
            frame = encode_frame(rows[2 * i:2 * i + 2])
            if i == 250:
                frame = frame[:-3]          # a cut short packet: one row kept, one fault
            w.append(Kind.BINARY, frame, t0 + (i + 1) * 1_000_000, i, conn=1)
    monkeypatch.setattr(replay_kite, "_rows_of_block", counted)
    direct_blocks.clear()
    mixed = run(tmp_path)
    assert True in direct_blocks and False in direct_blocks
    assert mixed[0][:2] == (599, 1)
    monkeypatch.setattr(replay_kite, "_rows_of_block", lambda cols: None)
    assert run(tmp_path) == mixed


def test_output_formats_hold_the_same_rows(day, tmp_path):
    import pandas as pd

    for fmt in ("csv", "jsonl", "parquet"):
        assert cli("--data-dir", day, "--symbols", "NIFTY 50", "--out", tmp_path / f"o.{fmt}"
                   ).exit_code == 0
    csv_rows = pd.read_csv(tmp_path / "o.csv")
    jsonl = pd.DataFrame([json.loads(line) for line in (tmp_path / "o.jsonl").open()])
    parquet = pd.read_parquet(tmp_path / "o.parquet")
    assert len(csv_rows) == len(jsonl) == len(parquet) > 10
    for frame in (jsonl, parquet):
        assert frame["last_price"].tolist() == csv_rows["last_price"].tolist()
        assert frame["wall_ns"].tolist() == csv_rows["wall_ns"].tolist()
    assert set(csv_rows["symbol"]) == {"NIFTY 50"}
    # Parquet's time is a timestamp (IST), the same instants as wall_ns; CSV's and JSONL's
    # are ISO text with the offset and every nanosecond, which pandas reads back exactly.
    assert str(parquet["time"].dtype) == "datetime64[ns, Asia/Kolkata]"
    assert (parquet["time"].astype("int64") == parquet["wall_ns"]).all()
    for frame in (csv_rows, jsonl):
        assert frame["time"].str.endswith("+05:30").all()
        assert (pd.to_datetime(frame["time"]).astype("int64") == frame["wall_ns"]).all()


def test_seeking_from_a_snapshot_equals_replaying_from_the_start_at_every_later_tick(day):
    books, wall = all_books(day)
    marks = read_wal(day / "kite", "ticks", kinds=[Kind.SNAPSHOT_MARK]).wall_ns
    starts = [int(marks[2]), int(marks[len(marks) // 2]) + 1_000_000, int(wall[-1] - 10**8)]
    for start in starts:
        replay = KiteReplay(day)
        seek = list(replay.ticks(start_ns=start, books=True, verify=True))
        assert replay.result.seeded_from is not None and not replay.result.mismatches
        seek_books = np.concatenate([b.books for b in seek])
        assert seek_books.tobytes() == books[wall >= start].tobytes()


def test_a_book_the_live_engine_got_wrong_is_caught_and_named(tmp_path):
    class Faulty(KiteCapture):
        """Stores a corrupted book in every third snapshot, as a live-engine bug would."""

        def snapshot(self):
            state = self.books.state()
            number = self.recorder.counters.snapshots
            if number % 3 == 2 and len(state):
                state["bid_quantity"][0, 0] += 1
            wall, mono = self.feed.now()
            from shrivenq.wal import records
            self.ticks.append(*records.snapshot_mark(self.session, number), wall, mono)
            self.snapshots.append(Kind.BOOK_SNAPSHOT,
                                  encode_kite_snapshot(state, self.session, number, wall), wall, mono)
            self.recorder.counters.snapshots += 1

    capture(tmp_path, Faulty, drop=False, seconds=1.5)
    result = cli("--data-dir", tmp_path, "--verify")
    assert result.exit_code == 4
    assert "VERIFY FAILED" in result.output and "bid_quantity replayed" in result.output


def test_gaps_are_reported_not_papered_over(day):
    result = cli("--data-dir", day, "--symbols", "NIFTY 50")
    assert "GAPS: 1 span" in result.output and "conn 0" in result.output


@pytest.mark.parametrize("args,words", [
    (["--start", "2026-11-20T15:30", "--end", "2026-11-20T09:15"], "is not before"),
    (["--symbols", "NIFTY 5O"], "NIFTY 50"),
    (["--start", "1999-01-01T09:15", "--end", "1999-01-01T09:16"], "no ticks between"),
    (["--start", "yesterday"], "--start 'yesterday'"),
    (["--every", "1s"], "give --out too"),
    (["--out", "books.xlsx"], "unknown format .xlsx"),
])
def test_bad_requests_get_a_clear_message(day, args, words):
    result = cli("--data-dir", day, *args)
    assert result.exit_code == 1 and words in result.output, result.output
    assert "Traceback" not in result.output


def test_no_data_dir_is_a_clear_error(tmp_path):
    result = cli("--data-dir", tmp_path / "nothing")
    assert result.exit_code == 1 and "no Kite data under" in result.output


def test_a_damaged_segment_is_named_and_can_be_skipped(day, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(day, copy)
    segment = sorted((copy / "kite").glob("*/ticks/*.wal"))[1]
    data = bytearray(segment.read_bytes())
    data[400] ^= 0x40
    segment.write_bytes(bytes(data))
    result = cli("--data-dir", copy)
    assert result.exit_code == 1 and segment.name in result.output
    skipped = cli("--data-dir", copy, "--skip-corrupt")
    # Replayed, but not whole: exit 3, and what was left out is named.
    assert skipped.exit_code == 3 and "ticks replayed" in skipped.output
    assert "SKIPPED" in skipped.output and segment.name in skipped.output


def _copy(day, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(day, copy)
    return copy, sorted((copy / "kite").glob("*/ticks/*.wal"))


def _wal_cli(*args):
    return CliRunner().invoke(app, ["wal", *map(str, args)], catch_exceptions=False)


def test_a_deleted_segment_is_reported_not_passed_over(day, tmp_path):
    """A segment missing from the middle of a day (deleted, lost in a copy) is data lost: the
    numbering shows the hole, so verify fails and replay refuses or, told to skip, says so."""
    copy, segments = _copy(day, tmp_path)
    whole = cli("--data-dir", copy)
    gone = segments[1]
    gone.unlink()
    verify = _wal_cli("verify", copy)
    assert verify.exit_code == 1 and f"missing: {gone.name}" in verify.output
    result = cli("--data-dir", copy)
    assert result.exit_code == 1 and f"{gone.name}: missing" in result.output
    skipped = cli("--data-dir", copy, "--skip-corrupt")
    assert skipped.exit_code == 3 and f"{gone.name}: missing" in skipped.output
    replayed = int(re.search(r"([\d,]+) ticks replayed", skipped.output)[1].replace(",", ""))
    assert 0 < replayed < int(re.search(r"([\d,]+) ticks replayed", whole.output)[1].replace(",", ""))


def test_a_hole_outside_the_time_range_read_is_not_a_loss(day, tmp_path):
    copy, segments = _copy(day, tmp_path)
    after = segments[2]
    start = int(open_segment(after).blocks[0].frame.min_wall_ns) + 1
    segments[1].unlink()
    with pytest.raises(WalCorruptError, match="missing"):
        list(WalReader(copy / "kite", "ticks", workers=1).batches())
    reader = WalReader(copy / "kite", "ticks", start_ns=start, workers=1)
    assert sum(len(b) for b in reader.batches()) > 0 and not reader.skipped


def test_a_cut_short_segment_with_later_ones_is_damage_not_a_crash(day, tmp_path):
    """Only the newest segment of a directory can have a crash's torn tail (the next writer
    repairs it); one cut short in the middle lost records and is reported as such."""
    copy, segments = _copy(day, tmp_path)
    middle = segments[1]
    with open(middle, "r+b") as f:
        f.truncate(middle.stat().st_size // 2)
    result = cli("--data-dir", copy)
    assert result.exit_code == 1 and middle.name in result.output
    assert "later segments exist" in result.output
    skipped = cli("--data-dir", copy, "--skip-corrupt")
    assert skipped.exit_code == 3 and middle.name in skipped.output


def test_a_file_that_is_not_a_segment_is_skipped_on_request_and_named(day, tmp_path):
    copy, segments = _copy(day, tmp_path)
    bad = segments[1]
    bad.write_bytes(os.urandom(bad.stat().st_size))
    result = cli("--data-dir", copy)
    assert result.exit_code == 1 and bad.name in result.output and "bad magic" in result.output
    skipped = cli("--data-dir", copy, "--skip-corrupt")
    assert skipped.exit_code == 3 and bad.name in skipped.output
    assert "ticks replayed" in skipped.output


def test_the_notebook_api_raises_on_damage_or_skips_it_with_a_warning(day, tmp_path):
    from shrivenq.replay.dataset import ShrivenqDataWarning

    copy, segments = _copy(day, tmp_path)
    whole = len(shrivenq.open(copy).ticks())
    segments[1].unlink()
    with pytest.raises(WalCorruptError, match="missing"):
        shrivenq.open(copy).ticks()
    ds = shrivenq.open(copy, on_corrupt="skip")
    with pytest.warns(ShrivenqDataWarning, match="left out"):
        part = ds.ticks()
    assert 0 < len(part) < whole and len(ds.skipped) == 1
    assert segments[1].name in ds.skipped[0]
    with pytest.warns(ShrivenqDataWarning):
        assert len(ds.books(every="1s")) > 0
    with pytest.raises(ConfigError, match="on_corrupt"):
        shrivenq.open(copy, on_corrupt="ignore")


def test_a_failed_replay_leaves_an_earlier_out_file_whole(day, tmp_path):
    copy, segments = _copy(day, tmp_path)
    out = tmp_path / "books.csv"
    assert cli("--data-dir", copy, "--out", out).exit_code == 0
    before = out.read_bytes()
    data = bytearray(segments[1].read_bytes())
    data[400] ^= 0x40
    segments[1].write_bytes(bytes(data))
    assert cli("--data-dir", copy, "--out", out).exit_code == 1
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["books.csv", "copy"]
    # Nothing in range is an error too: the earlier file stays.
    empty = cli("--data-dir", day, "--out", out, "--start", "2001-01-01T09:15",
                "--end", "2001-01-01T09:16")
    assert empty.exit_code == 1 and "no ticks" in empty.output
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["books.csv", "copy"]


# --- the notebook API -----------------------------------------------------------------------

def test_notebook_api_ticks_books_and_replay_agree(day):
    ds = shrivenq.open(day)
    ticks = ds.ticks(symbols=["NIFTY 50"])
    assert len(ticks) > 20 and set(ticks["token"].tolist()) == {NIFTY}
    assert (np.diff(ticks["wall_ns"]) >= 0).all()
    books = ds.books(symbols=["NIFTY 50"])
    assert len(books) == len(ticks) and (books["last_price"] == ticks["last_price"]).all()
    pairs = list(ds.replay(symbols=["NIFTY 50"]))
    assert [int(t["last_price"]) for t, _ in pairs] == ticks["last_price"].tolist()
    assert all(b["token"] == NIFTY for _, b in pairs)
    middle = int(ticks["wall_ns"][len(ticks) // 2])
    assert len(ds.ticks(start=middle, symbols=["NIFTY 50"])) == (ticks["wall_ns"] >= middle).sum()
    assert len(ds.ticks(start=format_ns(middle).replace(" ", "T"), symbols=["NIFTY 50"])) \
        == (ticks["wall_ns"] >= middle // 10**6 * 10**6).sum()


def test_notebook_api_pandas_frame(day):
    df = shrivenq.open(day).to_pandas(symbols=["NIFTY BANK"])
    assert str(df.index.tz) == "Asia/Kolkata" and df.index.is_monotonic_increasing
    assert set(df["symbol"]) == {"NIFTY BANK"} and df["last_price"].between(1000, 100000).all()


def test_notebook_api_reports_the_feed_gap_it_reads_across(day):
    ds = shrivenq.open(day)
    with pytest.warns(shrivenq.ShrivenqDataWarning, match="1 feed gap"):
        ticks = ds.ticks(symbols=["NIFTY 50"])
    (gap,) = ds.gaps
    assert gap["from_ns"] <= gap["to_ns"] and gap["reason"]
    # a range that ends before the gap has none, and no warning
    before = int(ticks["wall_ns"][0]) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.ticks(end=min(before, gap["from_ns"]), symbols=["NIFTY 50"])
    assert ds.gaps == []


def _outage(day):
    batch = read_wal(day / "kite", "ticks")
    (down,) = batch.wall_ns[batch.kind == Kind.DISCONNECT]
    (i,) = np.flatnonzero(batch.kind == Kind.GAP)
    gap = msgpack.unpackb(batch.payload(int(i)))
    return int(down), int(batch.wall_ns[i]), gap


def test_a_read_ending_during_an_outage_reports_the_gap_with_its_end(day):
    """The GAP record is written when the connection is back; a range that ends before that
    sees only the DISCONNECT, and must still say that ticks are missing, and until when."""
    down, back, recorded = _outage(day)
    ds = shrivenq.open(day)
    with pytest.warns(shrivenq.ShrivenqDataWarning, match="1 feed gap"):
        ds.ticks(end=down + (back - down) // 2)
    (gap,) = ds.gaps
    assert (gap["from_ns"], gap["to_ns"]) == (recorded["from_ns"], recorded["to_ns"])
    with pytest.warns(shrivenq.ShrivenqDataWarning, match="1 feed gap"):
        ds.ticks()                                    # the whole day: the same gap, once
    assert [(g["from_ns"], g["to_ns"]) for g in ds.gaps] == [(gap["from_ns"], gap["to_ns"])]
    out = cli("--data-dir", day, "--end", format_ns(down + (back - down) // 2).replace(" ", "T"))
    assert "GAPS: 1" in out.output and "not reconnected" not in out.output


def test_a_read_wholly_inside_an_outage_reports_it(day):
    """No ticks and no DISCONNECT in the range: the outage is known only from the GAP record
    written after it. Without it the read would look like a quiet market."""
    down, back, recorded = _outage(day)
    ds = shrivenq.open(day)
    start, end = recorded["from_ns"] + 1, recorded["to_ns"] - 1
    with pytest.warns(shrivenq.ShrivenqDataWarning, match="1 feed gap"):
        ticks = ds.ticks(start=start, end=end)
    assert len(ticks) == 0
    (gap,) = ds.gaps
    assert (gap["from_ns"], gap["to_ns"]) == (recorded["from_ns"], recorded["to_ns"])


def test_an_outage_the_log_ends_in_is_reported_open(tmp_path):
    """A capture still down (or killed while down) has no GAP record at all: the gap is
    reported from its DISCONNECT, open."""
    market = KiteMarket(default_universe(5), seed=3)
    t0 = 1_763_610_300_000_000_000
    with WalWriter(tmp_path / "data", "kite", "ticks", IST, fsync="never") as w:
        w.append(*R.session_start("s", "kite", "0", []), t0, 0)
        for i in range(20):
            w.append(Kind.BINARY, encode_frame(market.ticks(2, KIND_FULL)), t0 + i * 10**6, i)
        w.append(*R.disconnect(1, 1006, "dropped"), t0 + 30 * 10**6, 30)
    ds = shrivenq.open(tmp_path / "data")
    with pytest.warns(shrivenq.ShrivenqDataWarning, match="1 feed gap"):
        ds.ticks(end=t0 + 60 * 10**6)
    (gap,) = ds.gaps
    assert gap["from_ns"] == t0 + 30 * 10**6 and gap["to_ns"] is None
    assert "not reconnected" in gap["reason"]


def test_notebook_api_takes_the_time_and_argument_types_a_notebook_has(day):
    import pandas as pd

    ds = shrivenq.open(day)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shrivenq.ShrivenqDataWarning)
        df = ds.to_pandas(symbols=["NIFTY 50"])
        wall = ds.ticks(symbols=["NIFTY 50"])["wall_ns"]
        # the DataFrame's own index values (datetime64, UTC-based) select those very rows
        got = ds.ticks(df.index.values[10], df.index.values[20], symbols=["NIFTY 50"])
        assert len(got) and (got["wall_ns"] == wall[(wall >= wall[10]) & (wall < wall[20])]).all()
        # a Timestamp keeps its nanoseconds: one past a tick's time leaves that tick out
        t = int(wall[10])
        assert len(ds.ticks(pd.Timestamp(t + 1, tz="UTC"), symbols=["NIFTY 50"])) \
            == len(ds.ticks(t + 1, symbols=["NIFTY 50"])) == (wall > t).sum()
        assert len(ds.ticks(symbols="NIFTY 50")) == len(ds.ticks(tokens=NIFTY)) == len(wall)
        by_string = ds.books(symbols=["NIFTY 50"], every="1s")
        for every in (pd.Timedelta("1s"), np.int64(10**9), "1000ms"):
            assert ds.books(symbols=["NIFTY 50"], every=every).tobytes() == by_string.tobytes()
    for bad in (1.5, "1 sec", 0, True):
        with pytest.raises(ConfigError, match="every"):
            ds.books(every=bad)
    with pytest.raises(ConfigError, match="tokens"):
        ds.ticks(tokens=["x"])
    with pytest.raises(ConfigError, match="start"):
        ds.ticks(start=3.5)


def test_notebook_frame_leaves_fields_a_packet_did_not_carry_missing(day):
    ds = shrivenq.open(day)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shrivenq.ShrivenqDataWarning)
        df = ds.to_pandas()
    index = df[df["token"] == BANKNIFTY]          # an index: no depth, no volume
    assert len(index) and index["bid_price_1"].isna().all() and index["volume"].isna().all()
    assert index["last_price"].notna().all() and index["close"].notna().all()
    full = df[df["kind"] == KIND_FULL]
    assert len(full) and full["bid_qty_1"].notna().all() and full["oi"].notna().all()
    assert full["last_trade_time"].notna().all()
    ltp = df[df["kind"] == KIND_LTP]
    assert len(ltp) and ltp["close"].isna().all() and ltp["average_price"].isna().all()
    assert str(df["volume"].dtype) == "Int64"     # quantities stay integers


def test_sampled_books_report_every_interval_from_the_start(day):
    ds = shrivenq.open(day)
    ticks = ds.ticks(symbols=["NIFTY 50"])
    start = int(ticks["wall_ns"][0]) + 500_000_000
    sampled = ds.books(start=start, symbols=["NIFTY 50"], every="250ms")
    assert sampled["wall_ns"][0] == start
    assert (np.diff(sampled["wall_ns"]) == 250_000_000).all()
    for row in sampled:  # each sample is the book after the last tick at or before it
        last = ticks[ticks["wall_ns"] <= row["wall_ns"]][-1]
        assert row["last_price"] == last["last_price"]


def test_sampling_without_a_start_is_on_the_ist_clock_and_grids_line_up(day, tmp_path):
    ds = shrivenq.open(day)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shrivenq.ShrivenqDataWarning)
        nifty = ds.books(symbols=["NIFTY 50"], every="250ms")
        bank = ds.books(symbols=["NIFTY BANK"], every="250ms")
    ist = 19_800 * 10**9
    for sampled in (nifty, bank):
        assert len(sampled) and ((sampled["wall_ns"] + ist) % 250_000_000 == 0).all()
    common = np.intersect1d(nifty["wall_ns"], bank["wall_ns"])
    assert len(common) >= min(len(nifty), len(bank)) - 1
    # from each day's IST midnight: an interval that does not divide a day (7m) keeps its
    # clock times from day to day
    from shrivenq.replay.output import grid_start
    t, one_day, seven = 1_763_610_300_123_456_789, 86_400 * 10**9, 420 * 10**9
    assert grid_start(t + one_day, seven) - grid_start(t, seven) == one_day
    assert format_ns(grid_start(t, seven)).endswith("09:13:00.000")
    out = tmp_path / "b.jsonl"             # replay --out samples on the same grid
    res = CliRunner().invoke(app, ["replay", "--data-dir", str(day), "--symbols", "NIFTY 50",
                                   "--every", "250ms", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == len(nifty)


def test_sampling_a_window_without_ticks_still_gives_the_known_book(day):
    ds = shrivenq.open(day)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shrivenq.ShrivenqDataWarning)
        wall = ds.ticks(symbols=["NIFTY 50"])["wall_ns"]
        gaps = np.diff(wall)
        k = int(np.argmax(gaps))                 # the longest stretch without a NIFTY 50 tick
        start, end = int(wall[k]) + 1, int(wall[k + 1])
        assert end - start > 1_000_000
        sampled = ds.books(start, end, symbols=["NIFTY 50"], every="1ms")
        before = ds.books(end=start, symbols=["NIFTY 50"])[-1]
    assert len(sampled) == -(-(end - start) // 1_000_000)
    assert (sampled["wall_ns"] == start + 1_000_000 * np.arange(len(sampled))).all()
    assert (sampled["last_price"] == before["last_price"]).all()
    assert (sampled["bid_price"] == before["bid_price"]).all()


def _two_sessions(root: Path, names: dict[int, str] | None = None) -> tuple[int, int, int, int]:
    """Session A: instruments 0 and 1 tick once a second from t0 for 10 s, then A stops;
    session B starts 10 s later with instrument 1 alone for 10 s. Returns the tokens of
    instruments 0 and 1, A's stop time and B's start time."""
    from shrivenq.kite.wire import encode_frame
    from shrivenq.sim.market import KiteMarket, default_universe
    from shrivenq.timeutil import IST
    from shrivenq.wal import WalWriter
    from shrivenq.wal import records as rec

    market = KiteMarket(default_universe(2), seed=5)
    t0 = 1_763_610_300 * 10**9 + 400_000_000        # 09:15:00.4 IST, off the 1 s grid
    w = WalWriter(root / "kite", "kite", "ticks", IST, fsync="never")

    def run(session, start, instruments, count):
        w.append(*rec.session_start(session, "kite", "test", [], names), start - 1, 0)
        for k in range(count):
            frame = encode_frame(market.ticks(1, KIND_FULL, instruments=instruments))
            w.append(Kind.BINARY, frame, start + k * 10**9, 0, instruments=frame_keys(frame))

    run("A", t0, [0, 1], 20)
    stop_a = t0 + 20 * 10**9
    w.append(*rec.session_stop("A"), stop_a, 0)
    start_b = stop_a + 10 * 10**9
    run("B", start_b, [1], 10)
    w.close()
    first, second = (int(i.token) for i in default_universe(2))
    return first, second, stop_a, start_b


def test_sampled_books_belong_to_their_session_whatever_the_start(tmp_path):
    only_a, both, stop_a, start_b = _two_sessions(tmp_path)
    ds = shrivenq.open(tmp_path)
    whole = ds.books(every="1s")
    # A's books up to its stop (after its last tick too), nothing between the sessions, and
    # session A's instrument not through session B
    last_a = stop_a - 10**9                         # A's last tick
    tail = whole[(whole["wall_ns"] > last_a) & (whole["wall_ns"] <= stop_a)]
    assert set(tail["token"]) == {only_a, both}
    between = whole[(whole["wall_ns"] > stop_a) & (whole["wall_ns"] < start_b)]
    assert len(between) == 0
    # a read that ends before B also stops sampling at A's stop
    ending = ds.books(start=stop_a - 5 * 10**9, end=start_b - 10**9, every="1s")
    assert len(ending) and ending["wall_ns"].max() <= stop_a
    assert only_a not in whole[whole["wall_ns"] >= start_b]["token"]
    assert both in whole[whole["wall_ns"] >= start_b]["token"]
    # the same answer from any start: one time, one answer
    for start in (stop_a - 2_400_000_000, stop_a - 400_000_000, stop_a + 2_600_000_000,
                  start_b - 400_000_000):
        assert start in whole["wall_ns"] or stop_a <= start < start_b  # on the whole's grid
        part = ds.books(start=start, end=start_b + 3 * 10**9, every="1s")
        same = whole[(whole["wall_ns"] >= start) & (whole["wall_ns"] < start_b + 3 * 10**9)]
        on_grid = part[np.isin(part["wall_ns"], same["wall_ns"])]
        assert on_grid.tobytes() == same.tobytes()
    # a window entirely between the sessions has no books
    assert len(ds.books(start=stop_a + 10**9, end=stop_a + 5 * 10**9, every="1s")) == 0


def test_names_recorded_on_the_day_outlive_the_instrument_master(tmp_path):
    """An expired contract is gone from today's master; the session start recorded its name,
    so a notebook still finds it by name and labels it, and replay --out labels it too."""
    from shrivenq.sim.market import default_universe

    expired = "NIFTY21JAN14000CE"
    token = int(default_universe(2)[0].token)
    only_a, both, stop_a, start_b = _two_sessions(tmp_path / "data", {token: expired})
    ds = shrivenq.open(tmp_path / "data", cache_dir=tmp_path / "no-cache")
    with pytest.raises(ConfigError, match="unknown symbol"):
        ds.instruments.resolve([expired])           # not in the master
    ticks = ds.ticks(symbols=[expired])
    assert len(ticks) and set(ticks["token"]) == {token}
    late = shrivenq.open(tmp_path / "data", cache_dir=tmp_path / "no-cache")
    df = late.to_pandas(start=stop_a - 5 * 10**9)   # from mid-session: no session start read
    assert set(df[df["token"] == token]["symbol"]) == {expired}
    out = tmp_path / "b.csv"
    res = CliRunner().invoke(app, ["replay", "--data-dir", str(tmp_path / "data"), "--out",
                                   str(out), "--cache-dir", str(tmp_path / "no-cache")])
    assert res.exit_code == 0, res.output
    assert expired in out.read_text() and expired in res.output


def test_recorded_names_resolve_alongside_the_master_and_hostile_ones_are_ignored(tmp_path):
    from shrivenq.sim.market import default_universe
    from shrivenq.wal import WalWriter
    from shrivenq.wal.records import control_payload

    first, second = (int(i.token) for i in default_universe(2))
    _two_sessions(tmp_path / "data", {first: "OLDFUT"})
    # a later session renames the token (Kite re-uses expired contracts' tokens), and one
    # written by hand carries a map with an out-of-range token: neither may stop reading
    w = WalWriter(tmp_path / "data" / "kite", "kite", "ticks", IST, fsync="never")
    late = 1_763_700_000 * 10**9
    w.append(Kind.SESSION_START, control_payload(
        Kind.SESSION_START, session="C", venue="kite", version="t", argv=[],
        names=[[first, "NEWFUT"]]), late, 0)
    w.append(Kind.SESSION_START, control_payload(
        Kind.SESSION_START, session="D", venue="kite", version="t", argv=[],
        names={first: "MAPFUT", 2**40: "EVIL", True: "BOOL"}), late + 1, 0)
    w.close()
    ds = shrivenq.open(tmp_path / "data", cache_dir=tmp_path / "no-cache")
    both = ds.ticks(symbols=["NIFTY BANK", "OLDFUT"])        # master and recorded, mixed
    assert set(both["token"]) == {first, second}
    assert set(ds.ticks(symbols="NEWFUT")["token"]) == {first}
    with pytest.raises(ConfigError, match="unknown symbol 'EVIL'"):
        ds.ticks(symbols="EVIL")
    with pytest.raises(ConfigError, match="symbols is empty"):
        ds.ticks(symbols="")
    with pytest.raises(ConfigError, match="outside"):
        ds.ticks(end=np.datetime64("2500-01-01"))
    assert len(ds.ticks()) == 30


def test_damage_past_the_end_of_a_read_never_fails_it(tmp_path):
    """Looking past the end for the GAP of an outage the range ends in must not make the
    read depend on data outside it: a damaged block there ends the look, and the outage is
    reported open from its DISCONNECT, as it would be without the look."""
    from shrivenq.wal import format as wfmt

    market = KiteMarket(default_universe(5), seed=3)
    t0 = 1_763_610_300_000_000_000
    root = tmp_path / "data"
    with WalWriter(root, "kite", "ticks", IST, fsync="never", block_bytes=1) as w:
        w.append(*R.session_start("s", "kite", "0", []), t0, 0)
        for i in range(10):
            w.append(Kind.BINARY, encode_frame(market.ticks(2, KIND_FULL)), t0 + i * 10**6, i)
        w.append(*R.disconnect(1, 1006, "dropped"), t0 + 20 * 10**6, 20)
        w.append(*R.gap(1, t0 + 20 * 10**6, t0 + 90 * 10**6, "reconnected"), t0 + 90 * 10**6, 90)
        w.append(Kind.BINARY, encode_frame(market.ticks(2, KIND_FULL)), t0 + 91 * 10**6, 91)
    end = t0 + 50 * 10**6
    ds = shrivenq.open(root)
    with pytest.warns(shrivenq.ShrivenqDataWarning, match="1 feed gap"):
        ds.ticks(end=end)
    assert [(g["from_ns"], g["to_ns"]) for g in ds.gaps] == [(t0 + 20 * 10**6, t0 + 90 * 10**6)]
    # damage the GAP's block (block 12: session start, 10 ticks, the disconnect, the gap)
    seg = next(root.rglob("*.wal"))
    data = bytearray(seg.read_bytes())
    at = wfmt.HEADER_SIZE
    for _ in range(12):
        at += wfmt.FRAME_SIZE + wfmt.unpack_frame(bytes(data[at:at + wfmt.FRAME_SIZE])).stored_len
    assert wfmt.unpack_frame(bytes(data[at:at + wfmt.FRAME_SIZE])).min_wall_ns == t0 + 90 * 10**6
    data[at + wfmt.FRAME_SIZE + 3] ^= 0xFF
    seg.write_bytes(bytes(data))
    ds = shrivenq.open(root)                           # on_corrupt="raise", the default
    with pytest.warns(shrivenq.ShrivenqDataWarning, match="1 feed gap"):
        ticks = ds.ticks(end=end)
    assert len(ticks) == 20
    (gap,) = ds.gaps
    assert gap["from_ns"] == t0 + 20 * 10**6 and gap["to_ns"] is None


def test_replay_and_verify_report_progress_that_ends_at_the_totals(day):
    import io
    from shrivenq.replay.runner import ReplayRequest, run_replay
    from shrivenq.wal import verify

    calls = []
    code = run_replay(ReplayRequest(data_dir=day, cache_dir=day / "no-cache"), out=io.StringIO(),
                      progress=lambda *args: calls.append(args))
    total = sum(len(b.rows) for b in KiteReplay(day).ticks())
    assert code == 0 and len(calls) >= 2
    ticks = [c[0] for c in calls]
    walls = [c[1] for c in calls]
    assert ticks == sorted(ticks) and ticks[-1] == total
    # No --start or --end: the range starts at the first tick and has no end.
    first = next(b for b in KiteReplay(day).ticks() if len(b.rows)).wall_ns[0]
    assert walls == sorted(walls) and all(c[2:] == (first, None) for c in calls)

    steps = []
    report = verify(day, progress=lambda *args: steps.append(args))
    assert [s[0] for s in steps] == list(range(1, len(report.segments) + 1))
    assert {s[1] for s in steps} == {len(report.segments)}
    assert steps[-1][2] == sum(s.records for s in report.segments)


def test_on_a_terminal_the_progress_line_is_erased_before_the_summary(day):
    """stdout and stderr on one terminal, as when a user runs replay by hand: the summary
    must start on a clean line, not after the progress text."""
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "shrivenq.cli", "replay", "--data-dir",
                             str(day)], stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:        # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = out.decode()
    assert "\rreplay: " in text, "no progress line was drawn"
    before, summary = text.split("symbol", 1)
    # Everything the progress line drew is overwritten by spaces and a carriage return.
    assert before.rstrip(" ").endswith("\r") and "ticks replayed" in summary


# --- verify must never pass without checking; damage around a seek -----------------------

def _marks(day) -> list[int]:
    batch = read_wal(day / "kite", "ticks")
    return sorted(int(w) for w in batch.wall_ns[batch.kind == Kind.SNAPSHOT_MARK])


def test_verify_without_the_snapshots_stream_fails_and_says_why(day, tmp_path):
    import shutil

    copy, _ = _copy(day, tmp_path)
    for stream in (copy / "kite").glob("*/snapshots"):
        shutil.rmtree(stream)
    result = cli("--data-dir", copy, "--verify")
    assert result.exit_code == 4, result.output
    assert "not in the snapshots stream" in result.output
    assert "verified: all" not in result.output
    # a replay that does not verify is not affected
    assert cli("--data-dir", copy).exit_code == 0


def test_verify_of_a_range_holding_no_snapshot_checks_nothing_and_fails(day):
    first_mark = _marks(day)[0]
    end = format_ns(first_mark - 1).replace(" ", "T")
    result = cli("--data-dir", day, "--verify", "--end", end)
    assert result.exit_code == 4 and "nothing was verified" in result.output, result.output
    assert "ticks replayed" in result.output


T0 = 1_763_610_300 * 10**9      # 2025-11-20 09:15 IST


class _Log:
    """A hand-made Kite log: sessions of 2 instruments, with snapshot marks and snapshots
    written or left out at will (what crashes and lost segments leave)."""

    def __init__(self, root: Path):
        from shrivenq.books import KiteBooks

        self.ticks = WalWriter(root, "kite", "ticks", IST, fsync="never")
        self.snaps = WalWriter(root, "kite", "snapshots", IST, fsync="never")
        self.market = KiteMarket(default_universe(2), seed=3)
        self.books = KiteBooks()

    def session(self, name: str, t0: int, marks: dict[int, int], written: set[int],
                marked: set[int] | None = None, stop: bool = True, count: int = 30,
                spacing: int = 10**8, flush_each: bool = False) -> int:
        """``count`` ticks from t0 ``spacing`` apart; after tick k of ``marks`` snapshot
        marks[k]: its mark if in ``marked`` (default all), its snapshot if in ``written``.
        Returns the time of the session's last record."""
        from shrivenq._ext.kite_frame import parse_many

        self.books.clear()
        self.ticks.append(*R.session_start(name, "kite", "test", []), t0, 0)
        wall = t0
        for k in range(count):
            frame = encode_frame(self.market.ticks(1, KIND_FULL, instruments=[0, 1]))
            wall = t0 + (k + 1) * spacing
            self.ticks.append(Kind.BINARY, frame, wall, 0, instruments=frame_keys(frame))
            if flush_each:
                self.ticks.flush()              # a block a tick
            rows, _, _ = parse_many(np.frombuffer(frame, np.uint8), np.array([0], np.uint64),
                                    np.array([len(frame)], np.uint32))
            self.books.apply(rows)
            if k in marks:
                n = marks[k]
                if marked is None or n in marked:
                    self.ticks.append(*R.snapshot_mark(name, n), wall + 1, 0)
                if n in written:
                    self.snaps.append(Kind.BOOK_SNAPSHOT, encode_kite_snapshot(
                        self.books.state(), name, n, wall + 1), wall + 1, 0)
        if stop:
            wall += spacing
            self.ticks.append(*R.session_stop(name), wall, 0)
        return wall

    def close(self):
        self.ticks.close()
        self.snaps.close()


def _newest_segments(root: Path) -> list[Path]:
    return [sorted((root / "kite").glob(f"*/{stream}/*.wal"))[-1]
            for stream in ("ticks", "snapshots")
            if list((root / "kite").glob(f"*/{stream}/*.wal"))]


def _crash(root: Path) -> None:
    """Cut each stream's newest segment after its last block, as kill -9 leaves it."""
    for seg in _newest_segments(root):
        end = open_segment(seg).blocks[-1].end
        seg.write_bytes(seg.read_bytes()[:end])


def _marked_session(root: Path, written: set[int], stop: bool, marked: set[int] | None = None,
                    spacing: int = 10**8, crash: bool | None = None) -> None:
    """One session "S" of 30 ticks (100 ms apart by default), snapshot marks after ticks
    10, 20 and 29 (numbers 0, 1, 2). ``crash`` (default: when it does not stop): the log
    as kill -9 leaves it."""
    log = _Log(root)
    log.session("S", T0, {10: 0, 20: 1, 29: 2}, written, marked, stop, spacing=spacing)
    log.close()
    if crash if crash is not None else not stop:
        _crash(root)


def test_a_crash_between_a_mark_and_its_snapshot_is_noted_not_failed(tmp_path):
    _marked_session(tmp_path, written={0, 1}, stop=False)
    result = cli("--data-dir", tmp_path, "--verify")
    assert result.exit_code == 0, result.output
    assert "snapshot 2 of session S" in result.output and "never written" in result.output
    assert "verified: all 2 snapshots" in result.output


@pytest.mark.parametrize("written,stop", [({0, 2}, False), ({0, 1}, True)])
def test_a_snapshot_missing_before_a_later_one_or_a_clean_stop_is_lost(tmp_path, written, stop):
    _marked_session(tmp_path, written=written, stop=stop)
    result = cli("--data-dir", tmp_path, "--verify")
    lost = ({0, 1, 2} - written).pop()
    assert result.exit_code == 4, result.output
    assert "VERIFY FAILED: 1 snapshot(s) marked" in result.output
    assert f"snapshot {lost} of session S" in result.output
    assert "the other 2 snapshots in range equal" in result.output
    # the range read ending right after the lost mark still finds the later evidence
    if not stop:
        end = format_ns(T0 + 22 * 10**8).replace(" ", "T")   # mark 1 + 0.1 s
        assert cli("--data-dir", tmp_path, "--verify", "--end", end).exit_code == 4


def test_a_damaged_snapshot_before_a_seek_is_skipped_on_request(day, tmp_path):
    copy, _ = _copy(day, tmp_path)
    start = format_ns(_marks(day)[5] + 1).replace(" ", "T")
    whole = cli("--data-dir", day, "--start", start)
    seeded = re.search(r"started from snapshot (\d+) ", whole.output)
    assert whole.exit_code == 0 and seeded, whole.output
    # damage the snapshots block holding the snapshot the seek starts from
    seg = sorted((copy / "kite").glob("*/snapshots/*.wal"))[0]
    at = _marks(day)[5]
    block = next(b for b in open_segment(seg).blocks
                 if b.frame.min_wall_ns <= at <= b.frame.max_wall_ns)
    data = bytearray(seg.read_bytes())
    data[block.offset + block.frame.size - 8] ^= 0x20
    seg.write_bytes(bytes(data))
    refused = cli("--data-dir", copy, "--start", start)
    assert refused.exit_code == 1 and seg.name in refused.output
    skipped = cli("--data-dir", copy, "--start", start, "--skip-corrupt")
    assert skipped.exit_code == 3, skipped.output
    earlier = re.search(r"started from snapshot (\d+) ", skipped.output)
    assert earlier is None or int(earlier[1]) < int(seeded[1]), skipped.output
    assert "SKIPPED" in skipped.output and seg.name in skipped.output
    # the books are still right: every instrument's summary equals the undamaged replay's
    assert skipped.output.split("ticks replayed")[0].splitlines()[1:] == \
        whole.output.split("ticks replayed")[0].splitlines()[1:]


def test_a_lost_seek_mark_falls_back_to_an_earlier_snapshot(day, tmp_path):
    copy, segments = _copy(day, tmp_path)
    batch = read_wal(day / "kite", "ticks")
    marks = batch.wall_ns[batch.kind == Kind.SNAPSHOT_MARK]
    # a mark in a segment that is neither the first nor the last
    for seg in segments[1:-1]:
        held = open_segment(seg).blocks
        lo, hi = held[0].frame.min_wall_ns, held[-1].frame.max_wall_ns
        inside = [int(m) for m in marks if lo <= m <= hi]
        if inside:
            break
    else:
        pytest.skip("no mark in a middle segment")  # the fixture's rotation makes one
    seg.unlink()
    at = inside[-1] + 1
    start = format_ns(at).replace(" ", "T")
    refused = cli("--data-dir", copy, "--start", start)
    assert refused.exit_code == 1 and seg.name in refused.output
    result = cli("--data-dir", copy, "--start", start, "--skip-corrupt")
    assert result.exit_code == 3, result.output
    assert "is in a part of the ticks stream that was left out: started from" in result.output
    assert f"{seg.name}: missing" in result.output
    assert "SKIPPED (--skip-corrupt): 1 damaged or missing part(s)" in result.output  # once
    # every tick and book after the start is what a replay of the whole damaged log gives
    seeking = KiteReplay(copy, on_corrupt="skip")
    got = list(seeking.ticks(start_ns=at, books=True))
    assert seeking.result.notes
    whole = [b for b in KiteReplay(copy, on_corrupt="skip").ticks(books=True)]
    rows = np.concatenate([b.rows for b in whole])
    books = np.concatenate([b.books for b in whole])
    after = np.concatenate([b.wall_ns for b in whole]) >= at
    assert np.concatenate([b.rows for b in got]).tobytes() == rows[after].tobytes()
    assert np.concatenate([b.books for b in got]).tobytes() == books[after].tobytes()
    ds = shrivenq.open(copy, on_corrupt="skip")
    with pytest.warns(shrivenq.replay.dataset.ShrivenqDataWarning):
        assert len(ds.ticks(start=at)) == int(after.sum())
    assert ds.notes


@pytest.mark.parametrize("args", [["--tokens", "99999999999"], ["--tokens=-5"],
                                  ["--symbols", "4294967296"]])
def test_tokens_out_of_range_are_refused_in_a_line(day, args):
    result = cli("--data-dir", day, *args)
    assert result.exit_code == 1 and "out of range" in result.output, result.output
    assert "Traceback" not in result.output
    with pytest.raises(ConfigError, match="out of range"):
        shrivenq.open(day).ticks(tokens=2**40)


def test_a_write_failure_on_out_is_a_line_and_the_earlier_file_stays(day, tmp_path):
    """A real write failure (the file size limit: EFBIG, as a full disk gives ENOSPC) in a
    separate process: one line, exit 1, the earlier --out file whole."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "books.csv"
    out.write_text("an earlier replay's rows\n")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    for fmt in ("csv", "jsonl", "parquet"):
        target = out.with_suffix(f".{fmt}")
        if fmt != "csv":
            target.write_text("earlier\n")
        before = target.read_bytes()
        proc = subprocess.run([sys.executable, "-m", "shrivenq.cli", "replay", "--data-dir",
                               str(day), "--out", str(target)], capture_output=True, text=True,
                              preexec_fn=limit, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert "writing failed" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert target.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_mismatch_names_the_instrument_and_instruments_without_ticks_are_listed(day):
    from shrivenq.replay.kite import _diff

    replay = KiteReplay(day)
    batches = list(replay.ticks())
    state = np.concatenate([b.rows for b in batches])[:1].copy()
    stored = state.copy()
    stored["bid_quantity"][0, 0] += 1
    token = int(state["token"][0])
    assert _diff(state, stored, {token: "NIFTY 50"})[0].startswith(
        f"NIFTY 50 (token {token}): bid_quantity replayed")
    result = cli("--data-dir", day, "--symbols", "NIFTY 50", "--tokens", "12345")
    assert result.exit_code == 0
    assert "no ticks in range for 1 of the instruments asked for: 12345" in result.output


def test_sampled_books_taken_during_an_outage_are_marked_feed_down(day):
    """A sample inside a recorded outage carries the last book received before it: it is
    marked, per instrument by the connection its latest tick came on, and nothing else is."""
    ds = shrivenq.open(day)
    with pytest.warns(shrivenq.replay.dataset.ShrivenqDataWarning):
        ticks = ds.ticks()
        sampled = ds.books(every="10ms")
    gaps = ds.gaps
    assert len(gaps) == 1 and gaps[0]["to_ns"] > gaps[0]["from_ns"]
    by_token = {}
    for token in np.unique(ticks["token"]).tolist():
        mine = ticks[ticks["token"] == token]
        by_token[token] = (mine["wall_ns"], mine["conn"])
    expected = []
    for row in sampled:
        times, conns = by_token[int(row["token"])]
        k = int(np.searchsorted(times, row["wall_ns"], side="right")) - 1
        conn = int(conns[k])
        expected.append(any(g["conn"] == conn and g["from_ns"] <= row["wall_ns"] < g["to_ns"]
                            for g in gaps))
    assert sampled["feed_down"].tolist() == expected
    assert 0 < sum(expected) < len(expected)
    # per-tick book rows are never marked: a tick was received
    assert not ds.books()["feed_down"].any()


def test_a_mark_long_before_a_crash_is_lost_not_left_unwritten(tmp_path):
    """A session killed at 30 s, ticks a second apart, snapshots 1 (at 21 s) and 2 (at
    30 s) missing: 2 lies in the crash's last seconds (left unwritten), 1 lies 9 s before
    the end (it was on disk: lost). The default interval (60 s) makes every crash look
    like 1 against the previous snapshot; the window counts from the session's end."""
    _marked_session(tmp_path, written={0}, stop=False, spacing=10**9)
    result = cli("--data-dir", tmp_path, "--verify")
    assert result.exit_code == 4, result.output
    noted, failed = result.output.split("VERIFY FAILED")[:2]
    assert "snapshot 2 of session S" in noted and "never written" in noted
    assert "1 snapshot(s) marked" in failed and "snapshot 1 of session S" in failed


def test_a_crash_right_after_a_mark_is_a_note_whatever_the_snapshot_interval(tmp_path):
    """Snapshots a minute apart (the default), the process killed right after a mark."""
    log = _Log(tmp_path)
    log.session("S", T0, {59: 0, 119: 1}, {0}, stop=False, count=120, spacing=10**9)
    log.close()
    _crash(tmp_path)
    result = cli("--data-dir", tmp_path, "--verify")
    assert result.exit_code == 0, result.output
    assert "snapshot 1 of session S" in result.output and "never written" in result.output


def test_a_session_end_lost_with_a_closed_segment_is_not_a_crash(tmp_path):
    """The newest ticks segment deleted (its session's end with it): what is left closed
    cleanly, so nothing shows a crash, and the snapshots past the end fail verify."""
    _marked_session(tmp_path, written={0, 1, 2}, stop=False, marked={0, 1}, crash=False)
    result = cli("--data-dir", tmp_path, "--verify")
    assert result.exit_code == 4, result.output
    assert "lacks the marks of 1 snapshot(s)" in result.output


def test_a_damaged_snapshots_stream_never_passes_for_a_crash(tmp_path):
    """A crashed session (its ticks segment left open) whose closed snapshots segment has a
    damaged block: the snapshots it held were lost, not left unwritten by the crash."""
    _marked_session(tmp_path, written={0, 1, 2}, stop=False, crash=False)
    ticks = _newest_segments(tmp_path)[0]
    ticks.write_bytes(ticks.read_bytes()[:open_segment(ticks).blocks[-1].end])
    seg = next((tmp_path / "kite").glob("*/snapshots/*.wal"))
    block = open_segment(seg).blocks[-1]
    data = bytearray(seg.read_bytes())
    data[block.offset + block.frame.size - 8] ^= 0x20
    seg.write_bytes(bytes(data))
    result = cli("--data-dir", tmp_path, "--verify", "--skip-corrupt")
    assert result.exit_code == 4, result.output
    assert "never written" not in result.output and "snapshots only" in result.output
    assert "not in the snapshots stream" in result.output


@pytest.mark.parametrize("marked,stop,lost", [({0, 2}, False, True), ({0, 1}, True, True),
                                              ({0, 1}, False, False)])
def test_a_snapshot_whose_mark_the_ticks_stream_lacks(tmp_path, marked, stop, lost):
    """The mark is written before its snapshot, so a snapshot without one means the ticks
    stream lost it: in the middle of a session, or before a clean stop. Only right at the
    end of a session that never stopped is it a crash (the mark's block never written)."""
    _marked_session(tmp_path, written={0, 1, 2}, stop=stop, marked=marked)
    result = cli("--data-dir", tmp_path, "--verify")
    missing = ({0, 1, 2} - marked).pop()
    if lost:
        assert result.exit_code == 4, result.output
        assert "lacks the marks of 1 snapshot(s)" in result.output
        assert f"snapshot {missing} of session S" in result.output
    else:
        assert result.exit_code == 0, result.output
        assert f"note: snapshot {missing} of session S" in result.output
        assert "has no mark" in result.output and "verified: all 2 snapshots" in result.output


def test_a_seek_from_a_snapshot_whose_mark_never_reached_disk(tmp_path):
    """kill -9 can leave a session's last snapshot on disk and not its mark. A seek into the
    next session, before its first snapshot, starts from an earlier snapshot, not an error,
    and gives what a replay from the start gives."""
    log = _Log(tmp_path)
    end_a = log.session("A", T0, {10: 0, 20: 1, 29: 2}, {0, 1, 2}, marked={0, 1}, stop=False)
    t_b = end_a + 10**9
    log.session("B", t_b, {25: 0}, {0})
    log.close()
    at = t_b + 5 * 10**8                     # in B, before its first snapshot
    seeking = KiteReplay(tmp_path)
    got = list(seeking.ticks(start_ns=at, books=True))
    assert seeking.result.seeded_from is not None and seeking.result.seeded_from.snapshot == 1
    assert "capture died before it reached the disk" in seeking.result.notes[0]
    whole = list(KiteReplay(tmp_path).ticks(books=True))
    after = np.concatenate([b.wall_ns for b in whole]) >= at
    assert np.concatenate([b.books for b in got]).tobytes() == \
        np.concatenate([b.books for b in whole])[after].tobytes()
    result = cli("--data-dir", tmp_path, "--start", format_ns(at).replace(" ", "T"), "--verify")
    assert result.exit_code == 0, result.output
    assert "started from an earlier snapshot" in result.output


def test_deciding_a_missing_snapshot_past_the_range_reads_only_what_decides_it(
        tmp_path, monkeypatch):
    """A mark missing its snapshot near the end of the range: replay looks past the end for
    the session's next snapshot, and stops at it, not at the end of the log."""
    import shrivenq.replay.kite as kite_replay

    log = _Log(tmp_path)
    end_a = log.session("A", T0, {10: 0, 20: 1, 29: 2}, {0, 2}, stop=True)
    t = end_a + 10**9
    for name in "BCDE":                       # later sessions, 10 snapshots each
        t = log.session(name, t, {k: k // 3 for k in range(0, 30, 3)},
                        set(range(10))) + 10**9
    log.close()
    peeked = []
    real = kite_replay._peek
    monkeypatch.setattr(kite_replay, "_peek", lambda b, i: peeked.append(1) or real(b, i))
    end = format_ns(T0 + 22 * 10**8).replace(" ", "T")
    result = cli("--data-dir", tmp_path, "--verify", "--end", end)
    assert result.exit_code == 4 and "snapshot 1 of session A" in result.output, result.output
    assert len(peeked) <= 4, f"{len(peeked)} snapshots read to decide one"


def test_a_stop_counts_for_the_session_it_names(tmp_path):
    """Session A dies right after a mark (its snapshot never written); session B's start
    record is in a damaged block. B's stop must not be taken for A's: A's missing snapshot
    is a crash's, noted, not a loss."""
    log = _Log(tmp_path)
    end_a = log.session("A", T0, {10: 0, 20: 1, 29: 2}, {0, 1}, stop=False)
    log.close()
    _crash(tmp_path)
    log = _Log(tmp_path)                       # the next capture: recovery closes A's
    t_b = end_a + 10**9
    log.ticks.append(*R.session_start("B", "kite", "test", []), t_b, 0)
    log.ticks.flush()                          # B's start alone in its block
    for k in range(5):
        frame = encode_frame(log.market.ticks(1, KIND_FULL, instruments=[0, 1]))
        log.ticks.append(Kind.BINARY, frame, t_b + (k + 1) * 10**8, 0,
                         instruments=frame_keys(frame))
    log.ticks.append(*R.session_stop("B"), t_b + 10**9, 0)
    log.close()
    seg = sorted((tmp_path / "kite").glob("*/ticks/*.wal"))[-1]
    blocks = open_segment(seg).blocks
    start_block = next(b for b in blocks if b.frame.min_wall_ns == t_b)
    data = bytearray(seg.read_bytes())
    data[start_block.offset + start_block.frame.size - 8] ^= 0x20
    seg.write_bytes(bytes(data))
    result = cli("--data-dir", tmp_path, "--verify", "--skip-corrupt")
    assert result.exit_code == 3, result.output
    assert "note: snapshot 2 of session A" in result.output
    assert "VERIFY FAILED" not in result.output


def test_tokens_as_a_numpy_array_or_a_comma_separated_string(day):
    ds = shrivenq.open(day)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = len(ds.ticks(tokens=[NIFTY, BANKNIFTY]))
        assert want > 0
        assert len(ds.ticks(tokens=np.array([NIFTY, BANKNIFTY]))) == want
        assert len(ds.ticks(tokens=f"{NIFTY}, {BANKNIFTY}")) == want


def test_a_seed_mark_lost_mid_session_is_given_up_within_a_minute(tmp_path, monkeypatch):
    """Snapshot 2's mark is lost in the middle of a 10-minute session (a tick every 10 s, a
    block each, a snapshot a minute): a seek from it gives up on it a minute past its time,
    not at the session's end, and starts from snapshot 1."""
    import shrivenq.replay.kite as kite_replay

    log = _Log(tmp_path)
    log.session("S", T0, {k: k // 6 for k in range(5, 60, 6)}, set(range(10)),
                marked=set(range(10)) - {2}, count=60, spacing=10 * 10**9, flush_each=True)
    log.close()
    snap2 = T0 + 18 * 10 * 10**9 + 1
    read = []

    class Counting(kite_replay.WalReader):
        def __iter__(self):
            for batch in super().__iter__():
                read.append(len(batch))
                yield batch

    monkeypatch.setattr(kite_replay, "WalReader", Counting)
    seeking = KiteReplay(tmp_path)
    got = sum(len(b.rows) for b in seeking.ticks(start_ns=snap2 + 1))
    assert got == 60 - 18 and seeking.result.seeded_from.snapshot == 1
    ticks_read = len(read)
    # the give-up pass read about a minute (7 blocks), the second from snapshot 1 onwards
    assert ticks_read <= 10 + (60 - 11), ticks_read


def test_damage_is_told_apart_by_the_wal_layout_not_by_directory_names():
    from shrivenq.replay.kite import stream_of

    assert stream_of("/data/snapshots/kite/2026-12-02/ticks/000002.wal: block 0 at byte 96: "
                     "body checksum mismatch") == "ticks"
    assert stream_of("/ticks/kite/2026-12-02/snapshots/000001.wal: missing") == "snapshots"
    assert stream_of("something else") is None
