"""Kite capture end to end over real loopback sockets: the simulator's every message is in
the WAL byte for byte, through drops, stalls and malformed frames; bad input is refused
before anything is written; SIGINT closes the WAL cleanly."""

from __future__ import annotations

import asyncio
import functools
import signal
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
from typer.testing import CliRunner

from shrivenq.books import KiteBooks
from shrivenq.books.snapshot import decode_kite_snapshot
from shrivenq.capture import kite as kite_capture
from shrivenq.capture.kite import KiteCapture, KiteCaptureSettings
from shrivenq.cli import app
from shrivenq.errors import AuthError
from shrivenq.kite import parse_frame_lenient
from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, KiteSimServer
from shrivenq.wal import Kind, inspect, read_wal, verify
from shrivenq.wal.records import session_names

NIFTY, BANKNIFTY = 256265, 260105


def settings(tmp_path, sim, **kw) -> KiteCaptureSettings:
    kw.setdefault("token_modes", {NIFTY: "full", BANKNIFTY: "full"})
    return KiteCaptureSettings(data_dir=tmp_path, api_key=DEMO_API_KEY,
                               access_token=kw.pop("access_token", DEMO_ACCESS_TOKEN),
                               ws_root=sim.ws_url, **kw)


def ticks_of(tmp_path):
    return read_wal(tmp_path / "kite", "ticks")


def binary_payloads(batch, conn=None):
    return [batch.payload(i) for i in range(len(batch))
            if batch.kind[i] == Kind.BINARY and (conn is None or batch.conn[i] == conn)]


async def until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_capture_stores_every_message_byte_for_byte_and_snapshots_match_the_ticks(tmp_path):
    async def main():
        async with KiteSimServer(rate=100, record=True, frame_interval=0.01) as sim:
            capture = KiteCapture(settings(tmp_path, sim, duration=1.5, snapshot_interval=0.3,
                                           token_modes={NIFTY: "full", BANKNIFTY: "quote",
                                                        408065: "ltp"}))
            summary = await capture.run()
            return summary, sim.connections[0].sent_binary()

    summary, sent = asyncio.run(main())
    batch = ticks_of(tmp_path)
    assert binary_payloads(batch) == sent and len(sent) > 50
    kinds = [Kind(k).name for k in batch.kind if k not in (Kind.BINARY, Kind.SNAPSHOT_MARK)]
    assert kinds[:5] == ["SESSION_START", "CONNECT", "SUBSCRIBE", "MODE", "MODE"]
    assert kinds[-2:] == ["UNSUBSCRIBE", "SESSION_STOP"]
    # CONNECT names the feed URL, without the query that carries the credentials.
    url = msgpack.unpackb(batch.payload(int(np.flatnonzero(batch.kind == Kind.CONNECT)[0])))["url"]
    assert url.startswith("ws://127.0.0.1:") and "?" not in url
    assert not any(DEMO_ACCESS_TOKEN.encode() in batch.payload(i) for i in range(len(batch)))
    assert summary.counters.gaps == 0 and not summary.lost_anything
    assert summary.counters.ticks == sum(len(parse_frame_lenient(p)[0]) for p in sent)
    # Each snapshot equals the books rebuilt from the ticks stream up to its mark.
    snaps = [decode_kite_snapshot(p) for p in read_wal(tmp_path / "kite", "snapshots").payloads()]
    assert [s.snapshot for s in snaps] == list(range(len(snaps)))
    # One snapshot every 0.3 s while capturing, then one at the clean shutdown: the last
    # mark is the record right before the session stop (the log's last), so after every
    # tick and the unsubscribe.
    marks = np.flatnonzero(batch.kind == Kind.SNAPSHOT_MARK)
    assert len(marks) == len(snaps)
    stop_at = len(batch) - 1
    assert batch.kind[stop_at] == Kind.SESSION_STOP and marks[-1] == stop_at - 1
    # The others were taken on the interval: each at least 0.3 s after the one before (the
    # first, after the session start), so no more than the 1.5 s capture holds, and at least
    # one before the shutdown.
    started = batch.mono_ns[np.flatnonzero(batch.kind == Kind.SESSION_START)[0]]
    interval = np.diff(np.concatenate([[started], batch.mono_ns[marks[:-1]]]))
    assert len(interval) >= 1 and (interval >= 299_000_000).all()   # 1 ms for clock reads
    books, seen = KiteBooks(), []
    for j in range(len(batch)):
        if batch.kind[j] == Kind.BINARY:
            books.apply(parse_frame_lenient(batch.payload(j))[0])
        elif batch.kind[j] == Kind.SNAPSHOT_MARK:
            snap = snaps[msgpack.unpackb(batch.payload(j))["snapshot"]]
            assert snap.wall_ns == batch.wall_ns[j]
            assert books.state().tobytes() == snap.rows.tobytes()
            seen.append(snap.snapshot)
    assert seen == [s.snapshot for s in snaps]
    assert verify(tmp_path).clean


def test_drops_stalls_and_malformed_frames_lose_nothing_received(tmp_path):
    async def main():
        async with KiteSimServer(rate=100, record=True, frame_interval=0.01) as sim:
            capture = KiteCapture(settings(tmp_path, sim, watchdog=0.5, snapshot_interval=60))
            stop = asyncio.Event()
            task = asyncio.create_task(capture.run(stop))
            await until(lambda: len(sim.connections) == 1
                        and sim.connections[0].stats.frames_sent > 10)
            sim.send_malformed(sim.connections[0], "truncated")
            await until(lambda: capture.recorder.counters.malformed_frames == 1)
            sim.drop(sim.connections[0])
            await until(lambda: len(sim.connections) == 2
                        and sim.connections[1].stats.frames_sent > 10)
            sim.stall(sim.connections[1])
            await until(lambda: len(sim.connections) == 3
                        and sim.connections[2].stats.frames_sent > 10)
            stop.set()
            summary = await task
            return summary, [c.sent_binary() for c in sim.connections]

    summary, sent = asyncio.run(main())
    batch = ticks_of(tmp_path)
    assert binary_payloads(batch) == [m for conn in sent for m in conn]
    gaps = [msgpack.unpackb(batch.payload(i)) for i in range(len(batch))
            if batch.kind[i] == Kind.GAP]
    assert len(gaps) == 2 and all(g["from_ns"] < g["to_ns"] for g in gaps)
    assert "watchdog" in gaps[1]["reason"]
    assert summary.counters.malformed_frames == 1 and summary.lost_anything
    assert sum(k == Kind.SUBSCRIBE for k in batch.kind) == 3  # re-subscribed each time
    assert verify(tmp_path).clean


def test_a_rejected_token_stops_with_auth_error_and_a_cleanly_closed_wal(tmp_path):
    async def main():
        async with KiteSimServer() as sim:
            capture = KiteCapture(settings(tmp_path, sim, access_token="stale-token-123456"))
            with pytest.raises(AuthError) as info:
                await capture.run()
            assert "stale-token" not in str(info.value)
            assert sim.rejected_handshakes == 1

    asyncio.run(main())
    report = verify(tmp_path)
    assert report.clean and all(s.state == "closed" for s in report.segments)
    kinds = [Kind(k).name for k in ticks_of(tmp_path).kind]
    assert kinds == ["SESSION_START", "SNAPSHOT_MARK", "SESSION_STOP"]


@pytest.mark.parametrize("compact", [True, False])
def test_capture_compacts_each_ticks_segment_it_closes_unless_told_not_to(tmp_path, compact,
                                                                         monkeypatch):
    # Blocks sealed every 0.1 s rather than every second: a short capture has many.
    monkeypatch.setattr(kite_capture, "WalWriter",
                        functools.partial(kite_capture.WalWriter, flush_interval=0.1))

    async def main():
        async with KiteSimServer(rate=200, record=True, frame_interval=0.01) as sim:
            capture = KiteCapture(settings(tmp_path, sim, duration=2.5, segment_bytes=3_000,
                                           compact=compact))
            summary = await capture.run()
            return summary, sim.connections[0].sent_binary()

    summary, sent = asyncio.run(main())
    assert binary_payloads(ticks_of(tmp_path)) == sent
    segments = [s for s in inspect(tmp_path) if s.stream == "ticks"]
    assert len(segments) >= 3 and all(s.state == "closed" for s in segments)
    if compact:     # a segment of one block has nothing to gain; every other one is compacted
        assert all(s.compacted or s.blocks == 1 for s in segments)
        assert sum(s.compacted for s in segments) >= 2
    else:
        assert not any(s.compacted for s in segments)
        assert sum(s.blocks > 1 for s in segments) >= 2
    # The summary's bytes on disk are the block bytes on disk, after compaction.
    assert summary.wal_bytes == sum(s.stored_bytes for s in inspect(tmp_path))
    assert verify(tmp_path).clean
    # Compacting everything afterwards (the snapshots too) changes nothing replay sees.
    before = cli("replay", "--data-dir", str(tmp_path), "--verify")
    assert cli("wal", "compact", str(tmp_path)).exit_code == 0
    assert all(s.compacted or s.blocks == 1 for s in inspect(tmp_path))
    after = cli("replay", "--data-dir", str(tmp_path), "--verify")
    assert before.exit_code == after.exit_code == 0 and before.output == after.output
    assert "verified: all" in after.output


# --- the command line ----------------------------------------------------------------------

def cli(*args, env=None):
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_cli_sim_capture_records_and_exits_zero(tmp_path):
    result = cli("capture", "run", "--sim", "--symbols", "NIFTY 50,NIFTY BANK", "--duration",
                 "1.5", "--sim-rate", "20", "--data-dir", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    assert "no gaps" in result.output
    assert {int(t) for t in np.concatenate([ticks_of(tmp_path).instruments(i) for i in
                                            range(len(ticks_of(tmp_path)))])} == {NIFTY,
                                                                                   BANKNIFTY}
    # the session start records the day's names, for when they leave the master
    batch = ticks_of(tmp_path)
    start = msgpack.unpackb(batch.payload(list(batch.kind).index(Kind.SESSION_START)))
    assert session_names(start) == {NIFTY: "NIFTY 50", BANKNIFTY: "NIFTY BANK"}


def test_cli_capture_that_had_a_gap_exits_3(tmp_path, monkeypatch):
    """A dropped connection is a gap in the recording: the summary says so and the exit code
    (3) lets a script tell it from a clean run."""
    import threading

    from shrivenq.sim import kite_server

    class DroppingSim(kite_server.SimThread):
        def __enter__(self):
            server = super().__enter__()

            def drop_once_streaming():
                while not (server.connections and server.connections[0].stats.frames_sent > 5):
                    time.sleep(0.02)
                server.drop(server.connections[0])
            threading.Thread(target=drop_once_streaming, daemon=True).start()
            return server

    monkeypatch.setattr(kite_server, "SimThread", DroppingSim)
    result = cli("capture", "run", "--sim", "--symbols", "NIFTY 50", "--duration", "2.5",
                 "--sim-rate", "50", "--data-dir", str(tmp_path), "--quiet")
    assert result.exit_code == 3, result.output
    assert "GAPS" in result.output or "gap" in result.output.lower()
    assert sum(k == Kind.GAP for k in ticks_of(tmp_path).kind) == 1


@pytest.mark.parametrize("args,words", [
    (["--symbols", "NIFTY 5O"], "NIFTY 50"),                       # typo: closest match
    (["--symbols", "NIFTY 50", "--mode", "fastest"], "--mode"),
    (["--tokens", ",".join(str((i << 8) | 1) for i in range(1, 9002))], "at most 9000"),
    (["--symbols", "NIFTY 50", "--duration", "-1"], "--duration"),
    (["--symbols", "NIFTY 50", "--fsync", "sometimes"], "sometimes"),
    (["--symbols", "NIFTY 50", "--segment-size", "huge"], "--segment-size"),
    (["--symbols", "NIFTY 50", "--until", "25:99"], "--until"),
])
def test_cli_refuses_bad_arguments_before_writing_anything(tmp_path, args, words):
    data = tmp_path / "data"
    result = cli("capture", "run", "--sim", "--data-dir", str(data), "--quiet", *args)
    assert result.exit_code == 1
    assert words in result.output and "Traceback" not in result.output
    assert not data.exists()


def test_cli_without_credentials_says_which_variable_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KITE_API_KEY", raising=False)
    result = cli("capture", "run", "--symbols", "NIFTY 50", "--quiet")
    assert result.exit_code == 1 and "KITE_API_KEY is not set" in result.output
    assert not (tmp_path / "data").exists()


def test_cli_unwritable_data_dir_is_a_clear_error_naming_it():
    # Nobody, root included, can create directories under /proc.
    result = cli("capture", "run", "--sim", "--symbols", "NIFTY 50", "--data-dir",
                 "/proc/shrivenq-test-data", "--quiet", "--duration", "1")
    assert result.exit_code == 1 and "/proc/shrivenq-test-data" in result.output
    assert "Traceback" not in result.output


def test_cli_data_dir_that_is_a_file_is_a_clear_error_naming_it(tmp_path):
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("I am a file")
    result = cli("capture", "run", "--sim", "--symbols", "NIFTY 50", "--data-dir",
                 str(not_a_dir), "--quiet", "--duration", "1")
    assert result.exit_code == 1 and str(not_a_dir) in result.output
    assert not_a_dir.read_text() == "I am a file"


def test_sigint_closes_the_capture_cleanly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "shrivenq.cli", "capture", "run", "--sim", "--symbols",
         "NIFTY 50,NIFTY BANK", "--sim-rate", "50", "--data-dir", str(tmp_path), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.rglob("*.wal")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "no gaps" in out
    report = verify(tmp_path)
    assert report.clean and all(s.state == "closed" for s in report.segments)
    assert Kind(ticks_of(tmp_path).kind[-1]).name == "SESSION_STOP"


def test_metrics_and_health_endpoints_report_the_live_capture(tmp_path):
    import json
    import urllib.error
    import urllib.request

    from shrivenq.capture.metrics import MetricsServer

    def get(url):
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    async def main():
        async with KiteSimServer(rate=100, frame_interval=0.01) as sim:
            capture = KiteCapture(settings(tmp_path, sim, watchdog=0.5))
            metrics = await MetricsServer(capture).start()
            base = f"http://127.0.0.1:{metrics.port}"
            stop = asyncio.Event()
            task = asyncio.create_task(capture.run(stop))
            await until(lambda: capture.recorder and capture.recorder.counters.ticks > 20)
            status, body = await asyncio.to_thread(get, base + "/health")
            health = json.loads(body)
            assert status == 200 and health["connected"] and health["ticks"] > 20
            assert health["gaps"] == 0 and health["last_tick_time"] > 0
            status, text = await asyncio.to_thread(get, base + "/metrics")
            assert status == 200 and "shrivenq_ticks_total" in text
            assert "shrivenq_connections_up 1.0" in text
            assert "shrivenq_wal_fast_blocks_total 0.0" in text
            sim.stall()
            await until(lambda: not capture.feed.stats[0].connected or
                        capture.recorder.counters.gaps, timeout=5)
            sim.resume()
            stop.set()
            await task
            status, body = await asyncio.to_thread(get, base + "/health")
            assert status == 503 and json.loads(body)["connected"] is False
            # Stopped: the last ticks segment is compacted (if it has more than one block).
            status, text = await asyncio.to_thread(get, base + "/metrics")
            st = capture.ticks.stats
            assert "shrivenq_wal_compaction_failures_total 0.0" in text
            assert (f"shrivenq_wal_compacted_segments_total {float(st.segments_compacted)}"
                    in text)
            assert (f"shrivenq_wal_compaction_saved_bytes_total "
                    f"{float(st.compaction_saved_bytes)}" in text)
            assert (await asyncio.to_thread(get, base + "/nope"))[0] == 404
            await metrics.stop()

    asyncio.run(main())


def test_recorder_stores_and_counts_every_kind_of_message(tmp_path):
    """Each message the feed can hand over: a frame of ticks (bytes, or bytes-like from
    another caller), a heartbeat, an empty frame, a text message, a truncated frame: stored
    raw in order with its tokens, counted, and the ticks in the books."""
    from shrivenq.capture.kite import KiteRecorder
    from shrivenq.kite.wire import encode_frame
    from shrivenq.sim.market import KiteMarket, default_universe
    from shrivenq.kite import KIND_FULL
    from shrivenq.wal import IST, WalWriter

    frame = encode_frame(KiteMarket(default_universe(5), seed=3).ticks(4, KIND_FULL))
    tokens = sorted({int(t) for t in parse_frame_lenient(frame)[0]["token"]})
    messages = [frame, bytearray(frame), b"\x00", b"", '{"type": "order", "data": {}}',
                frame[:-10]]
    wal = WalWriter(tmp_path, "kite", "ticks", tz=IST)
    books = KiteBooks()
    recorder = KiteRecorder(wal, books, "test")
    for i, m in enumerate(messages):
        recorder.on_message(1, m, 1_763_610_300_000_000_000 + i, i)
    wal.close()
    c = recorder.counters
    # the empty frame and the truncated one are malformed (stored all the same)
    assert (c.messages, c.heartbeats, c.text_messages, c.malformed_frames) == (6, 1, 1, 2)
    assert c.ticks == 4 + 4 + 3 and len(books) == len(tokens)
    batch = read_wal(tmp_path / "kite", "ticks")
    stored = [bytes(batch.payload(i)) for i in range(len(batch))]
    assert stored == [bytes(m) if not isinstance(m, str) else m.encode() for m in messages]
    assert sorted({int(k) for k in batch.instruments(0)}) == tokens
    assert list(batch.kind) == [Kind.BINARY] * 4 + [Kind.TEXT, Kind.BINARY]
