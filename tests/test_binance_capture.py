"""Binance capture end to end over real loopback sockets against the simulator: the live
book equals the exchange's true book at every check point, every message is in the WAL
byte for byte, replaying the WAL gives the same books and the same decisions, and faults
(lost, duplicate, reordered events, crossed books, disconnects, stalls, serverShutdown,
429s, lying snapshots, hostile messages) end in a GAP record and a resync, never a crash."""

from __future__ import annotations

import asyncio
import json
import time

import msgpack
import pytest

from shrivenq.replay.binance import replay_wal
from shrivenq.binance.sync import GAP, SYNCED
from shrivenq.books import ASK, BID
from shrivenq.capture.binance import (
    BinanceCapture, BinanceCaptureSettings, format_summary, run_binance_capture)
from shrivenq.errors import ConfigError
from shrivenq.sim.binance_market import DEFAULT_SYMBOLS
from shrivenq.sim.binance_server import BinanceSimServer
from shrivenq.wal import Kind, read_wal, verify

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def settings(tmp_path, sim, **kw):
    kw.setdefault("symbols", SYMBOLS)
    kw.setdefault("watchdog", 2.0)
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("backoff_cap", 0.2)
    return BinanceCaptureSettings(data_dir=tmp_path, market=sim.market, ws_root=sim.ws_url,
                                  rest_root=sim.rest_url, **kw)


async def until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def levels(book, side):
    return [tuple(r) for r in book.levels(side).tolist()]


class Checker:
    """Compares every synced live book with the simulator's true book at its update id."""

    def __init__(self, capture, sim):
        self.capture, self.sim = capture, sim
        self.checks = 0

    def check(self):
        for sym, sync in self.capture.books.syncs.items():
            if not sync.synced:
                continue
            truth = self.sim.books[sym].book_at(sync.book_id)
            assert truth is not None, f"{sym}: live book at an update id the exchange never had"
            assert levels(sync.book, BID) == sorted(truth[0].items(), reverse=True), sym
            assert levels(sync.book, ASK) == sorted(truth[1].items()), sym
            self.checks += 1

    async def run(self, every=0.02):
        while True:
            self.check()
            await asyncio.sleep(every)


def wal_of(tmp_path, market="spot"):
    return read_wal(tmp_path / ("binance" if market == "spot" else "binance-usdm"), "ticks")


def gap_reasons(batch):
    return [msgpack.unpackb(batch.payload(i))["reason"] for i in range(len(batch))
            if batch.kind[i] == Kind.GAP]


def assert_replay_matches(tmp_path, capture):
    rp = replay_wal(tmp_path / capture.venue)
    assert rp.books.state() == capture.books.state()
    assert rp.decisions == capture.decisions
    return rp


async def capture_with(sim, tmp_path, during, **kw):
    capture = BinanceCapture(settings(tmp_path, sim, **kw))
    stop = asyncio.Event()
    task = asyncio.create_task(capture.run(stop))
    checker = Checker(capture, sim)
    watch = asyncio.create_task(checker.run())
    try:
        await until(lambda: capture.books.syncs and all(
            s.synced for s in capture.books.syncs.values()))
        await during(capture, sim)
        checker.check()
    finally:
        stop.set()
        summary = await task
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    return capture, summary, checker


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_live_books_equal_the_true_books_and_replay_rebuilds_them_exactly(tmp_path, market):
    async def main():
        async with BinanceSimServer(market=market, interval=0.01, record=True) as sim:
            async def during(capture, sim):
                await asyncio.sleep(1.5)
            capture, summary, checker = await capture_with(sim, tmp_path, during)
            sent = [m for c in sim.connections for m in c.sent]
            return capture, summary, checker, sent, len(sim.connections)

    capture, summary, checker, sent, conns = asyncio.run(main())
    assert checker.checks > 100 and not summary.lost_anything
    assert conns == (1 if market == "spot" else 2)
    batch = wal_of(tmp_path, market)
    texts = [batch.payload(i).decode() for i in range(len(batch)) if batch.kind[i] == Kind.TEXT]
    assert sorted(texts) == sorted(sent) and len(sent) > 300   # every message, as sent
    kinds = [Kind(k).name for k in batch.kind]
    assert kinds[:2] == ["SESSION_START", "REST"] and kinds[-1] == "SESSION_STOP"
    assert summary.messages["trades"] > 0 and summary.messages["book_tickers"] > 0
    assert [d[0] for d in capture.decisions].count(SYNCED) == 2
    assert_replay_matches(tmp_path, capture)
    assert verify(tmp_path).clean


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_lost_duplicated_reordered_and_crossing_events_are_gaps_then_exact_resyncs(tmp_path,
                                                                                  market):
    async def main():
        async with BinanceSimServer(interval=0.01, market=market) as sim:
            async def during(capture, sim):
                sim.p_dup = 0.05
                await asyncio.sleep(0.3)
                sim.lose_events(1)
                await until(lambda: capture.book_gaps)
                await until(lambda: all(s.synced for s in capture.books.syncs.values()))
                sim.swap_events(1)
                await until(lambda: len(capture.book_gaps) >= 2)
                await until(lambda: all(s.synced for s in capture.books.syncs.values()))
                sim.cross_book("ETHUSDT")
                await until(lambda: any(g["reason"] == "crossed" for g in capture.book_gaps))
                await until(lambda: all(s.synced for s in capture.books.syncs.values()))
                await asyncio.sleep(0.3)
            return await capture_with(sim, tmp_path, during)

    capture, summary, checker = asyncio.run(main())
    reasons = {g["reason"] for g in summary.book_gaps}
    assert {"sequence", "crossed"} <= reasons and summary.lost_anything
    assert checker.checks > 50
    wal_reasons = gap_reasons(wal_of(tmp_path, market))
    assert any("ETHUSDT: crossed" in r for r in wal_reasons)
    assert sum(": sequence" in r for r in wal_reasons) >= 2
    syncs = sum(d[0] == SYNCED for d in capture.decisions)
    assert syncs == 2 + sum(d[0] == GAP for d in capture.decisions)
    assert sum(s["stale"] for s in summary.sync.values()) > 0   # duplicates were ignored
    assert_replay_matches(tmp_path, capture)


def test_random_faults_and_lying_snapshots_never_leave_a_wrong_book(tmp_path):
    async def main():
        async with BinanceSimServer(interval=0.01, seed=5) as sim:
            async def during(capture, sim):
                sim.p_lose, sim.p_dup, sim.p_swap = 0.01, 0.02, 0.01
                sim.lag_snapshots(2, updates=40)
                sim.corrupt_snapshots(1)
                sim.fail_snapshots(2, status=429, retry_after=0.2)
                await asyncio.sleep(1.0)
                await until(lambda: not (sim._fail or sim._corrupt or sim._lag))
                sim.p_lose = sim.p_dup = sim.p_swap = 0.0
                await until(lambda: all(s.synced for s in capture.books.syncs.values()))
            result = await capture_with(sim, tmp_path, during)
            return result + (sim.banned,)

    capture, summary, checker, banned = asyncio.run(main())
    assert banned == 0 and checker.checks > 50
    sync = summary.sync
    assert sum(s["refetches"] for s in sync.values()) >= 1          # stale/corrupt snapshots
    assert summary.messages["bad_snapshots"] == 1 and summary.snapshot_failures >= 2
    assert_replay_matches(tmp_path, capture)


def test_a_resync_storm_over_many_symbols_stays_within_the_weight_limit(tmp_path):
    symbols = [s.symbol for s in DEFAULT_SYMBOLS]

    async def main():
        # An IP allowance of 60 weight per 2 s; each snapshot (limit 100) weighs 5.
        async with BinanceSimServer(interval=0.01, weight_limit=60, weight_window=2.0) as sim:
            async def during(capture, sim):
                sim.lose_events(len(symbols))          # every book loses an event at once
                await until(lambda: len(capture.book_gaps) >= len(symbols))
                await until(lambda: all(s.synced for s in capture.books.syncs.values()))
            result = await capture_with(sim, tmp_path, during, symbols=symbols,
                                        snapshot_limit=100, weight_limit=60,
                                        weight_window=2.0)
            return result + (sim.banned, sim.too_many)

    capture, summary, checker, banned, too_many = asyncio.run(main())
    assert banned == 0 and too_many == 0
    assert summary.snapshots_fetched >= 2 * len(symbols)
    assert_replay_matches(tmp_path, capture)


def test_a_quiet_trades_connection_that_answers_pings_is_not_a_gap(tmp_path):
    """USD-M trades have their own connection; on a quiet contract it can be silent for
    longer than the watchdog. Answering a ping, it is alive: no reconnect, no gap, nothing
    reported lost. The depth connection beside it keeps the strict watchdog (a stall of it
    is a gap, as the test below shows)."""
    async def main():
        async with BinanceSimServer(market="usdm", interval=0.01, trade_every=200) as sim:
            # 6 s: at least one trade even when a loaded machine runs the simulator's steps
            # at a third of their pace (4 s saw none at a load average of 3).
            capture = BinanceCapture(settings(tmp_path, sim, symbols=["BTCUSDT"], duration=6,
                                              watchdog=1.0))
            summary = await capture.run()
            return capture, summary

    capture, summary = asyncio.run(main())
    trades = summary.messages["trades"]
    assert 0 < trades <= 4                  # a trade every 200 steps (>= 2 s): silent past 1 s
    assert summary.feed_gaps == [] and not summary.lost_anything
    assert sum(s.connects for s in capture.feed.stats) == 2


def test_a_book_out_of_sync_at_the_end_is_not_reported_as_resynced(tmp_path):
    """Stopped while BTCUSDT waited for a snapshot (a 418 with a long Retry-After): the
    summary must not call it resynced, nor count it among the books in sync."""
    async def main():
        async with BinanceSimServer(interval=0.01) as sim:
            capture = BinanceCapture(settings(tmp_path, sim, symbols=["BTCUSDT"]))
            stop = asyncio.Event()
            task = asyncio.create_task(capture.run(stop))
            await until(lambda: capture.books.syncs
                        and all(s.synced for s in capture.books.syncs.values()))
            sim.fail_snapshots(5, status=418, retry_after=30)
            sim.lose_events(1)
            await until(lambda: not capture.books.syncs["BTCUSDT"].synced)
            await asyncio.sleep(0.3)
            stop.set()
            return await task

    summary = asyncio.run(main())
    text = format_summary(summary, tmp_path)
    assert summary.out_of_sync == ["BTCUSDT"] and summary.lost_anything
    assert "0 books in sync at the end" in text and "NOT IN SYNC at the end: BTCUSDT" in text
    assert "BTCUSDT: sequence, not resynced by the end" in text


def test_a_full_disk_stops_capture_and_the_summary_counts_what_reached_it(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the WAL's writes past a size, as a full disk
    would: exit 1 naming the segment, the summary's record count is what is on disk, and
    what was received but not written is reported as lost."""
    import re
    import resource
    import signal
    import subprocess
    import sys

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))

    out = subprocess.run([sys.executable, "-m", "shrivenq.cli", "capture", "run", "--exchange",
                          "binance", "--sim", "--symbols", "BTCUSDT,ETHUSDT", "--duration", "8",
                          "--data-dir", str(tmp_path), "--quiet"], capture_output=True,
                         text=True, timeout=60, preexec_fn=small_disk)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "000001.wal: File too large" in out.stderr and "Traceback" not in out.stderr
    written = int(re.search(r"WAL records ([\d,]+)", out.stdout)[1].replace(",", ""))
    assert written == len(read_wal(tmp_path / "binance", "ticks")) > 0
    assert re.search(r"LOST: [\d,]+ records received but not written", out.stdout)
    assert "no gaps: every book" not in out.stdout
    # Replay says the session never ended, rather than passing its books as final.
    replay = subprocess.run([sys.executable, "-m", "shrivenq.cli", "replay", "--exchange",
                             "binance", "--data-dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert replay.returncode == 0 and "the last session has no end record" in replay.stdout


def test_disconnects_stalls_and_server_shutdown(tmp_path):
    async def main():
        async with BinanceSimServer(interval=0.01) as sim:
            async def during(capture, sim):
                gaps_before = len(capture.book_gaps)
                sim.shutdown(grace=0.3)                 # make-before-break: no book gap
                await until(lambda: capture.summary().handovers == 1)
                await asyncio.sleep(0.3)
                assert len(capture.book_gaps) == gaps_before and not capture.feed_gaps
                assert all(s.synced for s in capture.books.syncs.values())
                sim.drop()                              # abrupt: a feed gap, books reset
                await until(lambda: capture.feed_gaps)
                await until(lambda: all(s.synced for s in capture.books.syncs.values()))
                sim.stall()                             # silent: the watchdog reconnects
                await until(lambda: len(capture.feed_gaps) >= 2, timeout=10)
                await until(lambda: all(s.synced for s in capture.books.syncs.values()))
            return await capture_with(sim, tmp_path, during, watchdog=0.5)

    capture, summary, checker = asyncio.run(main())
    assert summary.handovers == 1 and len(summary.feed_gaps) == 2
    assert "watchdog" in summary.feed_gaps[1]["reason"]
    assert {g["reason"] for g in summary.book_gaps} == {"disconnect"}
    batch = wal_of(tmp_path)
    reasons = [msgpack.unpackb(batch.payload(i))["reason"] for i in range(len(batch))
               if batch.kind[i] == Kind.DISCONNECT]
    assert reasons[0].startswith("handover: serverShutdown")
    assert_replay_matches(tmp_path, capture)


def test_the_24_hour_limit_is_a_seamless_handover(tmp_path):
    async def main():
        async with BinanceSimServer(interval=0.01) as sim:
            async def during(capture, sim):
                await until(lambda: capture.summary().handovers >= 2)
            return await capture_with(sim, tmp_path, during, max_age=0.5)

    capture, summary, checker = asyncio.run(main())
    assert summary.handovers >= 2 and not summary.lost_anything and checker.checks > 20
    assert_replay_matches(tmp_path, capture)


def test_hostile_messages_are_stored_counted_and_resynced_never_fatal(tmp_path):
    bad_depth = json.dumps({"stream": "btcusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 1, "u": 2,
        "b": [["64000.001", "1"]], "a": []}}, separators=(",", ":"))
    junk = ["not json at all", "[]", '{"stream": 1}', '{"stream":"x@trade","data":{}}',
            '{"e": "serverShutdown"' , "\u00ff" * 10, bad_depth]

    async def main():
        async with BinanceSimServer(interval=0.01) as sim:
            async def during(capture, sim):
                for text in junk:
                    sim.send_raw(text)
                await until(lambda: any(g["reason"] == "bad_event" for g in capture.book_gaps))
                await until(lambda: all(s.synced for s in capture.books.syncs.values()))
            return await capture_with(sim, tmp_path, during)

    capture, summary, checker = asyncio.run(main())
    batch = wal_of(tmp_path)
    texts = [batch.payload(i).decode() for i in range(len(batch)) if batch.kind[i] == Kind.TEXT]
    assert all(t in texts for t in junk)
    assert summary.messages["malformed"] >= 5
    assert "BTCUSDT: bad_event" in "\n".join(gap_reasons(wal_of(tmp_path)))
    assert_replay_matches(tmp_path, capture)
    assert "GAPS" in format_summary(summary, tmp_path)


def test_unknown_symbols_and_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "data"
    for kw, words in [({"symbols": ["BTCUSDT", "NOPEUSDT"]}, "NOPEUSDT"),
                      ({"symbols": ["btc/usdt"]}, "not a Binance symbol"),
                      ({"snapshot_limit": 0}, "snapshot limit 0"),
                      ({"duration": -1}, "--duration")]:
        async def main():
            async with BinanceSimServer() as sim:
                capture = BinanceCapture(settings(data, sim, **kw))
                await capture.run()
        with pytest.raises(ConfigError, match=words):
            asyncio.run(main())
        assert not data.exists()
    with pytest.raises(ConfigError, match="--market"):
        BinanceCapture(BinanceCaptureSettings(
            symbols=SYMBOLS, data_dir=data, market="coinm"))


def test_run_binance_capture_with_the_simulator_exits_zero(tmp_path, capsys):
    code = run_binance_capture(BinanceCaptureSettings(symbols=SYMBOLS, data_dir=tmp_path,
                                                      duration=1.5), sim=True,
                               sim_interval=0.02, status=True)
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert "no gaps" in captured.out and "2 books in sync at the end" in captured.out
    assert "KB on disk" in captured.out         # sizes a short capture can read (not 0.0 MB)
    # The live status line, on stderr: books in sync, message rate, WAL size.
    assert "2/2 books in sync" in captured.err and "messages/s" in captured.err
    assert verify(tmp_path).clean


def test_replay_starts_over_at_each_session_and_refuses_records_without_one(tmp_path):
    from shrivenq.replay.binance import replay_records
    from shrivenq.errors import ReplayError
    from shrivenq.wal.reader import Record

    async def one():
        async with BinanceSimServer(interval=0.01, seed=2) as sim:
            async def during(capture, sim):
                await asyncio.sleep(0.3)
            return await capture_with(sim, tmp_path, during)

    asyncio.run(one())
    second, _, _ = asyncio.run(one())
    rp = assert_replay_matches(tmp_path, second)
    assert rp.sessions == 2
    with pytest.raises(ReplayError, match="SESSION_START"):
        replay_records([Record(Kind.TEXT, 1, 1, 0, 0, b"{}", ())])


def test_an_unreachable_rest_api_is_an_exchange_error_before_anything_is_written(tmp_path):
    import socket

    from shrivenq.errors import ExchangeError

    with socket.socket() as sock:        # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path / "data"
    capture = BinanceCapture(BinanceCaptureSettings(
        symbols=SYMBOLS, data_dir=data, ws_root=f"ws://127.0.0.1:{port}",
        rest_root=f"http://127.0.0.1:{port}"))
    with pytest.raises(ExchangeError, match="exchangeInfo failed"):
        asyncio.run(capture.run())
    assert not data.exists()


def test_a_wal_that_fails_mid_capture_ends_it_with_the_error(tmp_path):
    from shrivenq.errors import WalError

    async def main():
        async with BinanceSimServer(interval=0.01) as sim:
            capture = BinanceCapture(settings(tmp_path, sim))
            task = asyncio.create_task(capture.run())
            await until(lambda: capture.ticks is not None and capture.books.counters.depth > 5)
            real = capture.ticks.append

            def broken(kind, *args, **kw):
                if kind == Kind.TEXT:
                    raise WalError("disk full (injected)")
                return real(kind, *args, **kw)

            capture.ticks.append = broken
            with pytest.raises(WalError, match="disk full"):
                await asyncio.wait_for(task, 20)

    asyncio.run(main())
    assert verify(tmp_path).clean      # what was written before is closed and readable
