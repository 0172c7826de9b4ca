"""WAL round trips: what goes in comes out, byte-exact, in order, filtered as asked."""

from __future__ import annotations

import datetime as dt
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from shrivenq.errors import (
    ConfigError, WalCorruptError, WalError, WalFormatError, WalIOError, WalLockedError)
from shrivenq.wal import (
    IST, UTC, FsyncPolicy, Kind, WalReader, WalWriter, inspect, read_wal, verify)
from shrivenq._ext import tick_delta as td
from shrivenq.wal import format as fmt
from shrivenq.wal import records as R

T0 = 1_763_610_300_000_000_000          # 2025-11-20 09:15 IST


def write_records(root, n=500, venue="kite", **kw):
    kw.setdefault("block_bytes", 2000)
    expected = []
    with WalWriter(root, venue, "ticks", tz=IST, **kw) as w:
        for i in range(n):
            payload = (b"%d|" % i) + bytes([i % 256]) * (i % 97)
            inst = [1000 + i % 5, 7] if i % 3 else None
            w.append(Kind.BINARY if i % 10 else Kind.TEXT, payload, T0 + i * 1_000_000,
                     10 + i, conn=i % 4, instruments=inst)
            expected.append((int(Kind.BINARY if i % 10 else Kind.TEXT), i % 4,
                             T0 + i * 1_000_000, 10 + i, payload,
                             tuple(inst) if inst else ()))
    return expected


def as_tuples(batch):
    return [(r.kind, r.conn, r.wall_ns, r.mono_ns, r.payload, r.instruments) for r in batch]


def test_single_appends_round_trip_exactly(tmp_path):
    expected = write_records(tmp_path)
    batch = read_wal(tmp_path / "kite")
    assert as_tuples(batch) == expected
    assert batch.kind.dtype == np.uint8 and batch.wall_ns.dtype == np.int64
    assert (batch.version == 1).all()
    rec = batch.records
    assert rec.dtype.names[:5] == ("kind", "version", "conn", "wall_ns", "mono_ns")
    assert rec["wall_ns"].tolist() == [e[2] for e in expected]


def test_batch_and_single_appends_interleave_in_order(tmp_path):
    payloads = b"".join(b"p%05d" % i for i in range(1000))
    lengths = np.full(1000, 6, dtype=np.uint32)
    wall = T0 + np.arange(1000, dtype=np.int64)
    with WalWriter(tmp_path, "v", block_bytes=700) as w:
        w.append(Kind.CONNECT, R.connect(3, "wss://x")[1], T0 - 5, 0, conn=3)
        first = w.append_batch(Kind.BINARY, payloads, lengths, wall, wall - T0, conns=3,
                               instruments=np.arange(2000) % 9,
                               instrument_counts=np.full(1000, 2))
        assert first == 1
        w.append(*R.gap(3, T0 + 5, T0 + 9, "reconnect"), T0 + 2000, 2000, conn=3)
    b = read_wal(tmp_path / "v")
    assert len(b) == 1002
    assert b.payloads()[1:1001] == [b"p%05d" % i for i in range(1000)]
    assert R.decode_control(b.kind[0], b.version[0], b.payload(0)) == {"conn": 3,
                                                                        "url": "wss://x"}
    g = R.decode_control(b.kind[-1], b.version[-1], b.payload(1001))
    assert g == {"conn": 3, "from_ns": T0 + 5, "to_ns": T0 + 9, "reason": "reconnect"}
    assert b.instruments(1).tolist() == [0, 1] and b.instruments(0).tolist() == []


def test_empty_payloads_and_large_payloads(tmp_path):
    big = os.urandom(3_000_000)
    with WalWriter(tmp_path, "v", block_bytes=1 << 16) as w:
        w.append(Kind.BINARY, b"", T0, 0)
        w.append(Kind.BINARY, big, T0 + 1, 1)
        w.append(Kind.REST, b"", T0 + 2, 2)
    b = read_wal(tmp_path / "v")
    assert b.payloads() == [b"", big, b""]


def test_time_filter_seeks_with_the_footer_index(tmp_path):
    expected = write_records(tmp_path, n=2000)
    lo, hi = T0 + 700 * 1_000_000, T0 + 900 * 1_000_000
    r = WalReader(tmp_path / "kite", start_ns=lo, end_ns=hi)
    got = as_tuples(r.read())
    assert got == [e for e in expected if lo <= e[2] < hi]
    assert r.blocks_skipped_by_time > r.blocks_read   # most blocks never decompressed


def test_instrument_and_kind_filters(tmp_path):
    expected = write_records(tmp_path, n=300)
    with WalWriter(tmp_path, "kite", tz=IST) as w:
        w.append(*R.gap(0, 1, 2, "test"), T0 + 10**9, 1)
    got = as_tuples(WalReader(tmp_path / "kite", instruments=[1002]).read())
    want = [e for e in expected if 1002 in e[5]]
    assert got[:-1] == want and got[-1][0] == Kind.GAP    # control records stay by default
    got = as_tuples(WalReader(tmp_path / "kite", instruments=[1002], control=False).read())
    assert got == want
    got = as_tuples(WalReader(tmp_path / "kite", kinds=[Kind.TEXT]).read())
    assert got == [e for e in expected if e[0] == Kind.TEXT]


def test_rotation_by_size_keeps_order_and_closes_every_segment(tmp_path):
    expected = write_records(tmp_path, n=3000, segment_bytes=8_000)
    segs = sorted((tmp_path / "kite").rglob("*.wal"))
    assert len(segs) > 3
    summaries = inspect(tmp_path)
    assert all(s.state == "closed" for s in summaries)
    # segment_bytes bounds header + blocks; the footer comes on top
    assert all(s.stored_bytes + fmt.HEADER_SIZE <= 8_000 for s in summaries)
    assert sum(s.records for s in summaries) == 3000
    assert as_tuples(read_wal(tmp_path / "kite")) == expected


@pytest.mark.parametrize("tz, boundary, days", [
    (IST, dt.datetime(2025, 11, 20, 18, 30, tzinfo=UTC), ["2025-11-20", "2025-11-21"]),
    (UTC, dt.datetime(2025, 11, 21, 0, 0, tzinfo=UTC), ["2025-11-20", "2025-11-21"]),
])
def test_rotation_at_the_trading_day_boundary(tmp_path, tz, boundary, days):
    edge = int(boundary.timestamp()) * 10**9
    walls = [edge - 2, edge - 1, edge, edge + 1]
    with WalWriter(tmp_path, "x", tz=tz) as w:
        w.append(Kind.BINARY, b"a", walls[0], 0)
        w.append(Kind.BINARY, b"b", walls[1], 1)
        w.append_batch(Kind.BINARY, b"cd", [1, 1], walls[2:], [2, 3])
    found = sorted(p.relative_to(tmp_path / "x").parts[0] for p in tmp_path.rglob("*.wal"))
    assert found == days
    assert read_wal(tmp_path / "x").payloads() == [b"a", b"b", b"c", b"d"]
    first = WalReader(tmp_path / "x" / days[0]).read()
    assert first.payloads() == [b"a", b"b"]


def test_footer_counts_and_inspect(tmp_path):
    write_records(tmp_path, n=600)
    (s,) = inspect(tmp_path)
    assert s.state == "closed" and s.records == 600
    assert s.instruments[7] == 400 and s.instruments[1001] == sum(
        1 for i in range(600) if i % 3 and i % 5 == 1)
    assert s.kinds == {int(Kind.TEXT): 60, int(Kind.BINARY): 540}
    assert s.first_wall_ns == T0 and s.last_wall_ns == T0 + 599 * 1_000_000
    assert s.ratio > 1


def test_footerless_segment_is_readable_while_being_written(tmp_path):
    w = WalWriter(tmp_path, "v", block_bytes=100, fsync="every-block")
    for i in range(50):
        w.append(Kind.BINARY, b"%d" % i * 20, T0 + i, i)
    assert w.flush() == 50
    got = read_wal(tmp_path / "v").payloads()
    assert got == [b"%d" % i * 20 for i in range(50)]
    rep = verify(tmp_path)
    assert rep.clean and rep.segments[0].state == "open" and rep.segments[0].live
    w.close()
    assert verify(tmp_path).segments[0].state == "closed"


def test_second_writer_on_the_same_stream_is_refused(tmp_path):
    with WalWriter(tmp_path, "v"):
        with pytest.raises(WalLockedError, match="another WAL writer"):
            WalWriter(tmp_path, "v")
        WalWriter(tmp_path, "v", "snapshots").close()   # another stream is fine


def test_durability_is_reported(tmp_path):
    seen = []
    with WalWriter(tmp_path, "v", fsync="every-block", block_bytes=50,
                   on_durable=seen.append) as w:
        for i in range(20):
            w.append(Kind.BINARY, b"x" * 30, T0 + i, i)
        deadline = time.monotonic() + 5
        while w.durable_records < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.durable_records == 20
    assert seen == sorted(seen) and seen[-1] == 20


def test_partial_block_is_flushed_after_the_interval(tmp_path):
    with WalWriter(tmp_path, "v", fsync="interval:10", flush_interval=0.05) as w:
        w.append(Kind.BINARY, b"lonely", T0, 0)
        deadline = time.monotonic() + 5
        while w.durable_records < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.durable_records == 1


def test_first_record_after_a_long_idle_is_sealed_on_time(tmp_path):
    """An append does not wake the writer thread for a block's first record; the thread,
    idle, wakes every flush_interval, and must still seal the block one interval after it."""
    with WalWriter(tmp_path, "v", fsync="never", flush_interval=0.2) as w:
        time.sleep(0.33)                     # the writer is part-way through an idle wait
        start = time.monotonic()
        w.append(Kind.BINARY, b"lonely", T0, 0)
        while w.written_records < 1 and time.monotonic() < start + 5:
            time.sleep(0.005)
        took = time.monotonic() - start
        assert w.written_records == 1 and 0.19 <= took < 0.2 + 0.5, took


def test_blocks_sealed_by_appends_reach_the_disk_without_waking_the_writer(tmp_path):
    """While a block is open the writer thread polls for sealed blocks, and an append that
    seals a single block does not wake it: with a 10 s flush interval that block is still
    written within a second (POLL_S, 50 ms, plus scheduling), and a stream's blocks too."""
    def written_within(w, n, seconds):
        deadline = time.monotonic() + seconds
        while w.written_records < n and time.monotonic() < deadline:
            time.sleep(0.002)
        return w.written_records == n

    with WalWriter(tmp_path, "v", fsync="never", block_bytes=4096, flush_interval=10) as w:
        payloads = [bytes([i]) * 1024 for i in range(104)]
        for p in payloads[:5]:               # block 1 sealed (the writer was asleep: woken),
            w.append(Kind.BINARY, p, T0, 0)  # block 2 opened
        assert written_within(w, 4, 1.0)
        time.sleep(0.1)                      # the writer now polls: block 2 is open
        for p in payloads[5:8]:              # block 2 sealed alone, nobody woken
            w.append(Kind.BINARY, p, T0, 0)
        assert written_within(w, 8, 1.0)
        for p in payloads[8:]:               # a steady stream: a block every ~20 ms
            w.append(Kind.BINARY, p, T0, 0)
            time.sleep(0.005)
        assert written_within(w, 104, 1.0)
    assert [bytes(r.payload) for r in WalReader(tmp_path / "v").records()] == payloads


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_flush_interval_must_be_a_positive_number_of_seconds(tmp_path, bad):
    with pytest.raises(ConfigError, match="flush_interval"):
        WalWriter(tmp_path, "v", flush_interval=bad)
    with WalWriter(tmp_path, "v") as w:   # the refused writer left its lock free
        w.append(Kind.BINARY, b"x", T0, 0)


def test_fsync_policy_parsing():
    assert FsyncPolicy.parse("every-block").mode == "every-block"
    assert FsyncPolicy.parse("interval:250").interval == 0.25
    assert str(FsyncPolicy.parse("interval:1000")) == "interval:1000"
    for bad in ("sometimes", "interval:", "interval:-5", "interval:x"):
        with pytest.raises(ConfigError, match="--fsync"):
            FsyncPolicy.parse(bad)


def test_full_queue_blocks_the_appender_and_loses_nothing(tmp_path, monkeypatch, caplog):
    real = fmt.compress_block

    def slow(*a, **k):
        time.sleep(0.02)
        return real(*a, **k)

    monkeypatch.setattr(fmt, "compress_block", slow)
    with WalWriter(tmp_path, "v", block_bytes=64, queue_blocks=1, fsync="never") as w:
        for i in range(60):
            w.append(Kind.BINARY, b"%03d" % i * 30, T0 + i, i)
        stats = w.stats
    assert stats.queue_full_waits > 0
    assert "write queue full" in caplog.text
    assert read_wal(tmp_path / "v").payloads() == [b"%03d" % i * 30 for i in range(60)]


def test_disk_error_surfaces_as_walioerror_and_keeps_what_was_written(tmp_path, monkeypatch):
    from shrivenq.wal import writer as wmod
    real = wmod._SegmentFile.write
    calls = {"n": 0}

    def failing(self, data):
        calls["n"] += 1
        if calls["n"] > 4:          # header, then three good blocks, then "disk full"
            os.pwrite(self.fd, data[: len(data) // 2], self.end)   # a partial write
            raise OSError(28, "No space left on device", str(self.path))
        return real(self, data)

    monkeypatch.setattr(wmod._SegmentFile, "write", failing)
    w = WalWriter(tmp_path, "v", block_bytes=100, fsync="every-block")
    with pytest.raises(WalIOError) as info:
        for i in range(1000):
            w.append(Kind.BINARY, b"%04d" % i * 30, T0 + i, i)
            time.sleep(0.001)
        w.flush()
    assert "No space left" in str(info.value) and "000001.wal" in info.value.path
    with pytest.raises(WalIOError):
        w.close()
    monkeypatch.setattr(wmod._SegmentFile, "write", real)
    # Nothing already written was damaged: the three good blocks are intact, in order.
    got = read_wal(tmp_path / "v").payloads()
    assert got == [b"%04d" % i * 30 for i in range(len(got))] and len(got) >= 3
    w2 = WalWriter(tmp_path, "v")     # recovery closes the segment at its last good block
    w2.close()
    assert verify(tmp_path).clean


def test_vanished_directory_is_a_clear_error(tmp_path):
    import shutil
    w = WalWriter(tmp_path, "v", block_bytes=100, fsync="every-block")
    w.append(Kind.BINARY, b"x" * 200, T0, 0)
    w.flush()
    shutil.rmtree(tmp_path / "v")
    with pytest.raises(WalIOError) as info:
        for i in range(50):
            w.append(Kind.BINARY, b"y" * 200, T0 + i, i)
        w.flush()
    assert str(tmp_path / "v") in info.value.path
    with pytest.raises(WalIOError):
        w.close()


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(WalIOError, match="no such file"):
        WalReader(tmp_path / "missing")
    bogus = tmp_path / "x.wal"
    bogus.write_bytes(b"hello, not a log" * 10)
    with pytest.raises(WalFormatError, match=r"x\.wal: not a shrivenq WAL"):
        list(WalReader(bogus))
    write_records(tmp_path / "r", n=50)
    seg = next((tmp_path / "r").rglob("*.wal"))
    short = tmp_path / "short.wal"
    short.write_bytes(b"hello")
    with pytest.raises(WalFormatError, match=r"short\.wal: not a shrivenq WAL"):
        list(WalReader(short))
    # The start of a real header and nothing else is what a crash while creating a segment
    # leaves: nothing in it, passed as torn (test_wal_recovery), not refused.
    short.write_bytes(seg.read_bytes()[:40])
    reader = WalReader(short)
    assert len(reader.read()) == 0 and [(t.offset, t.bytes) for t in reader.torn] == [(0, 40)]
    with pytest.raises(ConfigError):
        WalWriter(tmp_path, "a/b")
    # Names too long for a segment header are refused at once, with nothing created.
    with pytest.raises(ConfigError, match="too long"):
        WalWriter(tmp_path / "fresh", "v" * 40)
    assert not (tmp_path / "fresh").exists()


def test_newer_format_versions_are_refused(tmp_path):
    write_records(tmp_path, n=50)
    seg = next(tmp_path.rglob("*.wal"))
    data = bytearray(seg.read_bytes())
    newer = bytearray(data)
    struct.pack_into("<H", newer, 8, fmt.FORMAT_VERSION + 1)
    seg.write_bytes(newer)
    with pytest.raises(WalFormatError,
                       match=f"version {fmt.FORMAT_VERSION + 1} is newer than this reader"):
        list(WalReader(seg))
    # A block written with a codec this reader does not know: refused, not misread.
    frame = fmt.unpack_frame(bytes(data[fmt.HEADER_SIZE:]))
    body = bytes(data[fmt.HEADER_SIZE + 64: fmt.HEADER_SIZE + 64 + frame.stored_len])
    head = fmt.pack_frame(fmt.BLOCK_MAGIC, 9, frame.flags, 0, body, frame.raw_len,
                          frame.records, frame.min_wall_ns, frame.max_wall_ns, 0)
    data[fmt.HEADER_SIZE:fmt.HEADER_SIZE + 64] = head
    seg.write_bytes(data)
    with pytest.raises(WalFormatError, match="codec 9 is newer"):
        list(WalReader(seg))
    # A control record of a newer version is refused by its decoder.
    with pytest.raises(WalFormatError, match="GAP record version 2 is newer"):
        R.decode_control(Kind.GAP, 2, R.gap(0, 1, 2, "x")[1])


# A version 1 segment, as the writer of commit f421451 wrote it (plain codec, keys as plain
# u64): six BINARY records b"frame0".."frame5" at T0 + i us, mono 10 + i, conn 1, with
# instruments [256265 + i % 2, 738561] where i % 3, else none.
GOLDEN_V1_SEGMENT = bytes.fromhex(
    "534852565157414c0100600001000000171ca9e9e83ded18f0013501000000006b6974650000000000000000"
    "00000000000000000000000000000000000000007469636b7300000000000000000000000000000000000000"
    "ef67bf66ec649d2a57424c4b00010000000000007400000028010000060000000058b84d399a7918886bb84d"
    "399a791800000000000000002904af8f129a7bd83e0a71855508e13928b52ffd602800550300f40306000000"
    "08000000240058b84d399a7918e803000aa847b2c66586e719fcff0ae901450b09e90a010600000000020166"
    "72616d6530313233346672616d653513004004dc81c65204c419f2c201c814d46c570be86e26080031b44105"
    "0c010e38c1577000026500095746545200000000010000002f0100002f010000060000000058b84d399a7918"
    "886bb84d399a791800000000000000007b8066c06a0ec2554544256a9fd7d4838fa6666f726d617401a6626c"
    "6f636b7301a77265636f72647306ad66697273745f77616c6c5f6e73cf18799a394db85800ac6c6173745f77"
    "616c6c5f6e73cf18799a394db86b88ad66697273745f6d6f6e6f5f6e730aac6c6173745f6d6f6e6f5f6e730f"
    "ad7061796c6f61645f627974657324ac73746f7265645f6279746573ccb4a56b696e6473810106af696e7374"
    "72756d656e745f6b657973c41809e90300000000000ae903000000000001450b0000000000b1696e73747275"
    "6d656e745f636f756e7473c418020000000000000002000000000000000400000000000000a5696e646578c4"
    "286000000000000000b40000000600000000000000000000000058b84d399a7918886bb84d399a7918a9636c"
    "6f7365645f6e73cf18ed3de8e9b49df8a97265636f7665726564c0140100000000000053485256454e44004f"
    "cd024bf092a600")


def test_version_1_segments_still_read(tmp_path):
    """Version 2 changed how a block stores its instrument keys (a dictionary); logs written
    before read as they did."""
    seg = tmp_path / "kite" / "2025-11-20" / "ticks" / "000001.wal"
    seg.parent.mkdir(parents=True)
    seg.write_bytes(GOLDEN_V1_SEGMENT)
    t0 = 1_763_610_300_000_000_000
    got = [(r.kind, r.payload, r.wall_ns, r.mono_ns, r.conn, list(r.instruments))
           for r in read_wal(seg)]
    assert got == [(Kind.BINARY, b"frame%d" % i, t0 + i * 1000, 10 + i, 1,
                    [256265 + i % 2, 738561] if i % 3 else []) for i in range(6)]
    assert [int(k) for k in WalReader(tmp_path / "kite", instruments=[738561]).read().wall_ns] \
        == [t0 + i * 1000 for i in range(6) if i % 3]


def test_unknown_block_flags_are_refused(tmp_path):
    write_records(tmp_path, n=50)
    seg = next(tmp_path.rglob("*.wal"))
    data = bytearray(seg.read_bytes())
    frame = fmt.unpack_frame(bytes(data[fmt.HEADER_SIZE:]))
    body = bytes(data[fmt.HEADER_SIZE + 64: fmt.HEADER_SIZE + 64 + frame.stored_len])
    head = fmt.pack_frame(fmt.BLOCK_MAGIC, frame.codec, frame.flags | 0x80, 0, body,
                          frame.raw_len, frame.records, frame.min_wall_ns, frame.max_wall_ns, 0)
    data[fmt.HEADER_SIZE:fmt.HEADER_SIZE + 64] = head
    seg.write_bytes(data)
    with pytest.raises(WalFormatError, match="flags 0x8"):
        list(WalReader(seg))


def test_cli_inspect_and_verify(tmp_path):
    write_records(tmp_path, n=200)
    run = lambda *a: subprocess.run([sys.executable, "-m", "shrivenq.cli", "wal", *a],
                                    capture_output=True, text=True, timeout=60)
    out = run("inspect", str(tmp_path))
    assert out.returncode == 0 and "closed" in out.stdout and "200 records" in out.stdout
    assert "kite/ticks" in out.stdout and "ratio" in out.stdout
    ok = run("verify", str(tmp_path))
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 1 segments, 200 records")
    for cmd in ("inspect", "verify"):   # an error, exit 1 like every command's (2: usage)
        missing = run(cmd, str(tmp_path / "nope"))
        assert missing.returncode == 1 and "Traceback" not in missing.stderr
        assert missing.stderr.strip().count("\n") == 0 and "nope" in missing.stderr
    seg = next(tmp_path.rglob("*.wal"))
    healthy = seg.read_bytes()
    data = bytearray(healthy)
    data[200] ^= 0x40
    seg.write_bytes(data)
    bad = run("verify", str(tmp_path))
    assert bad.returncode == 1 and "block 0" in bad.stderr and "Traceback" not in bad.stderr
    # inspect reads footers only (this block's damage is verify's to find) but says when a
    # segment shows a problem: here, a tail appended after the trailer.
    seg.write_bytes(healthy + b"appended" * 20)
    looked = run("inspect", str(tmp_path))
    assert looked.returncode == 1 and "torn tail of 160 bytes" in looked.stdout
    seg.write_bytes(data)
    newer = tmp_path / "newer.wal"
    newer.write_bytes(data[:8] + b"\x07\x00" + data[10:])
    for cmd in ("inspect", "verify"):
        out = run(cmd, str(newer))
        assert out.returncode != 0, cmd
        assert "version 7 is newer" in out.stderr and str(newer) in out.stderr
        assert "Traceback" not in out.stderr
    short = tmp_path / "short.wal"
    short.write_bytes(data[:50])          # a segment cut while its header was written
    out = run("verify", str(short))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{short}: only 50 bytes of a segment header" in out.stdout + out.stderr


def test_sigterm_closes_the_segment_cleanly(tmp_path):
    child = f"""
import sys, time
from shrivenq.wal import WalWriter, Kind, close_on_signals
w = WalWriter({str(tmp_path)!r}, "v", fsync="never", block_bytes=1 << 20)
close_on_signals(w)
i = 0
print("ready", flush=True)
while True:
    w.append(Kind.BINARY, b"rec%d" % i, {T0} + i, i)
    i += 1
    if i % 1000 == 0:
        time.sleep(0.001)
"""
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + 15
    rep = verify(tmp_path)
    assert rep.clean and rep.segments[0].state == "closed"
    got = read_wal(tmp_path / "v").payloads()
    assert len(got) > 0 and got == [b"rec%d" % i for i in range(len(got))]


def test_a_signal_inside_append_is_handled_once_the_append_is_whole(tmp_path):
    import signal

    from shrivenq.wal import close_on_signals
    w = WalWriter(tmp_path, "v", fsync="never")
    old = signal.getsignal(signal.SIGUSR1)
    try:
        close_on_signals(w, signals=(signal.SIGUSR1,))
        w.append(Kind.BINARY, b"first", T0, 0)
        with w._cv:                              # as if interrupted inside append
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            assert w._deferred is not None and not w._closed
        with pytest.raises(SystemExit) as info:
            w.append(Kind.BINARY, b"second", T0 + 1, 1)
        assert info.value.code == 128 + signal.SIGUSR1
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert w._closed
    assert verify(tmp_path).clean
    assert read_wal(tmp_path / "v").payloads() == [b"first", b"second"]


def test_a_path_that_is_not_a_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WalIOError) as info:
        WalWriter(tmp_path / "file", "v")
    assert str(tmp_path / "file") in str(info.value)


def test_permission_denied_names_the_path(tmp_path):
    """A real EACCES from the kernel: root ignores directory modes, so the writer runs in a
    child process that first drops to the unprivileged user nobody."""
    import subprocess
    import sys

    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    # Import everything first: the interpreter's own files may not be readable by nobody.
    code = ("import os\n"
            "from shrivenq.errors import WalIOError\n"
            "from shrivenq.wal import WalWriter\n"
            "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            f"    WalWriter({str(ro)!r}, 'v')\n"
            "except WalIOError as err:\n"
            "    print('refused:', err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:") and str(ro) in out.stdout
    assert "Permission denied" in out.stdout


def test_permission_denied_creating_a_segment_surfaces_with_the_path(tmp_path, monkeypatch):
    import types

    from shrivenq.wal import writer as wmod

    def deny(path, *a, **k):
        if str(path).endswith(".wal"):
            raise PermissionError(13, "Permission denied", str(path))
        return os.open(path, *a, **k)

    fake = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os) if not n.startswith("__")})
    fake.open = deny
    monkeypatch.setattr(wmod, "os", fake)
    w = WalWriter(tmp_path, "v")
    w.append(Kind.BINARY, b"x", T0, 0)
    with pytest.raises(WalIOError) as info:
        w.flush()
    assert "Permission denied" in str(info.value)
    assert info.value.path.endswith("v/2025-11-20/ticks/000001.wal")
    with pytest.raises(WalIOError):
        w.append(Kind.BINARY, b"y", T0, 0)
    with pytest.raises(WalIOError):
        w.close()


@pytest.mark.skipif(not fmt.tick_delta_available(), reason="tick_delta not built")
def test_a_tick_delta_block_of_another_transform_version_is_refused_not_corrupt(tmp_path):
    from shrivenq.wal import CODEC_TICK_DELTA
    with WalWriter(tmp_path, "v", codec=CODEC_TICK_DELTA) as w:
        w.append(Kind.BINARY, b"\x00\x01\x00\x08" + b"\x00" * 8, T0, 0)
    seg = next(tmp_path.rglob("*.wal"))
    data = bytearray(seg.read_bytes())
    frame = fmt.unpack_frame(bytes(data[fmt.HEADER_SIZE:]))
    start = fmt.HEADER_SIZE + fmt.FRAME_SIZE
    raw = bytearray(zstandard.ZstdDecompressor().decompress(
        bytes(data[start:start + frame.stored_len]), max_output_size=frame.raw_len))
    td = raw.index(b"TD")
    raw[td + 2] = 99                                  # a transform version from the future
    body = zstandard.ZstdCompressor().compress(bytes(raw))
    head = fmt.pack_frame(fmt.BLOCK_MAGIC, CODEC_TICK_DELTA, frame.flags, 0, body, len(raw),
                          frame.records, frame.min_wall_ns, frame.max_wall_ns, 0)
    bad = tmp_path / "x.wal"
    bad.write_bytes(bytes(data[:fmt.HEADER_SIZE]) + head + body)
    with pytest.raises(WalFormatError, match="tick_delta format v99"):
        read_wal(bad, on_corrupt="skip")


def test_a_bug_in_the_writer_thread_surfaces_instead_of_hanging(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(fmt, "compress_block", broken)
    w = WalWriter(tmp_path, "v", block_bytes=10, queue_blocks=1)
    with pytest.raises(WalError, match="boom"):
        for i in range(100):
            w.append(Kind.BINARY, b"x" * 20, T0 + i, i)
        w.flush(timeout=10)
    with pytest.raises(WalError, match="boom"):
        w.close()


def test_instrument_keys_are_copied_and_checked_at_append(tmp_path):
    tokens = np.array([5, 6], dtype=np.uint64)
    with WalWriter(tmp_path, "v") as w:
        w.append(Kind.BINARY, b"a", T0, 0, instruments=tokens)
        tokens[:] = 99                                  # the caller reuses its buffer
        with pytest.raises(ValueError, match="instruments"):
            w.append(Kind.BINARY, b"b", T0, 0, instruments=[-1])
        w.append(Kind.BINARY, b"c", T0, 0, instruments=tokens)
    b = read_wal(tmp_path / "v")
    assert b.payloads() == [b"a", b"c"]
    assert b.instruments(0).tolist() == [5, 6] and b.instruments(1).tolist() == [99, 99]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_segment_that_vanishes_mid_read_fails_after_every_record_before_it(tmp_path, workers):
    write_records(tmp_path, n=1500, segment_bytes=4_000)
    reader = WalReader(tmp_path / "kite", workers=workers)
    segments = reader.segment_paths
    assert len(segments) >= 5
    gone = segments[2]
    gone.rename(tmp_path / "elsewhere.wal")          # after the reader listed it
    before = sum(len(b) for b in WalReader(segments[0], workers=1)) + sum(
        len(b) for b in WalReader(segments[1], workers=1))
    got = 0
    with pytest.raises(WalIOError, match=gone.name):
        for batch in reader:
            got += len(batch)
    assert got == before


def test_read_ahead_threads_change_nothing(tmp_path):
    expected = write_records(tmp_path, n=1500, segment_bytes=10_000)
    for kw in ({}, {"start_ns": T0 + 300 * 1_000_000}, {"instruments": [1003]}):
        one = as_tuples(WalReader(tmp_path / "kite", workers=1, **kw).read())
        two = as_tuples(WalReader(tmp_path / "kite", workers=2, **kw).read())
        assert one == two
    assert as_tuples(WalReader(tmp_path / "kite", workers=3).read()) == expected
    seg = sorted(tmp_path.rglob("*.wal"))[1]
    data = bytearray(seg.read_bytes())
    data[fmt.HEADER_SIZE + fmt.FRAME_SIZE + 2] ^= 1      # first block of the second segment
    seg.write_bytes(data)
    with pytest.raises(WalError, match="block 0"):
        WalReader(tmp_path / "kite", workers=2).read()
    r1 = WalReader(tmp_path / "kite", on_corrupt="skip", workers=1)
    r2 = WalReader(tmp_path / "kite", on_corrupt="skip", workers=2)
    assert as_tuples(r1.read()) == as_tuples(r2.read())
    assert [str(p) for p in r1.skipped] == [str(p) for p in r2.skipped] and r1.skipped


def test_a_record_of_a_newer_version_is_refused_not_misread(tmp_path):
    with WalWriter(tmp_path, "v") as w:
        w.append(Kind.BINARY, b"old", T0, 0)
        w.append(Kind.GAP, R.gap(0, 1, 2, "x")[1], T0 + 1, 1, version=2)
        w.append(200, b"a caller's own kind", T0 + 2, 2, version=9)
    with pytest.raises(WalFormatError, match="record kind 21 version 2 is newer"):
        read_wal(tmp_path / "v", on_corrupt="skip")
    assert not verify(tmp_path).clean


def test_kinds_storage_does_not_know_keep_any_version(tmp_path):
    with WalWriter(tmp_path, "v") as w:
        w.append(200, b"a caller's own kind", T0, 0, version=9)
    b = read_wal(tmp_path / "v")
    assert b.kind.tolist() == [200] and b.version.tolist() == [9]


def test_instrument_keys_may_come_packed_as_little_endian_u64_bytes(tmp_path):
    keys = [256265, 260105, 2**40 + 7]
    packed = np.array(keys, dtype="<u8").tobytes()
    reused = bytearray(packed)
    with WalWriter(tmp_path, "v") as w:
        w.append(Kind.BINARY, b"ints", T0, 0, instruments=keys)
        w.append(Kind.BINARY, b"bytes", T0 + 1, 1, instruments=packed)
        w.append(Kind.BINARY, b"bytearray", T0 + 2, 2, instruments=reused)
        reused[:8] = bytes(8)             # a caller reusing its buffer changes nothing stored
        w.append(Kind.BINARY, b"memoryview", T0 + 3, 3, instruments=memoryview(packed))
        w.append(Kind.BINARY, b"u8 view", T0 + 4, 4, instruments=memoryview(np.array(keys, "<u8")))
        with pytest.raises(ValueError, match="multiple of 8"):
            w.append(Kind.BINARY, b"ragged", T0 + 5, 5, instruments=packed[:-1])
        with pytest.raises(ValueError, match="multiple of 8"):
            w.append(Kind.BINARY, b"ragged", T0 + 5, 5, instruments=bytearray(packed[:-1]))
    batch = read_wal(tmp_path / "v")
    assert batch.payloads() == [b"ints", b"bytes", b"bytearray", b"memoryview", b"u8 view"]
    assert all(batch.instruments(i).tolist() == keys for i in range(5))
    assert len(read_wal(tmp_path / "v", instruments=[2**40 + 7])) == 5


def test_key_dictionary_that_lies_is_an_error_not_a_misread():
    """A block body whose key dictionary is inconsistent (it passed its checksum, so a
    writer bug, not disk damage) raises ValueError, which the reader reports as a bad
    block; it never hands out wrong instrument keys."""
    keys = np.array([738561, 256265, 738561, 260105, 256265], dtype=np.uint64)
    cols = fmt.Columns(kind=np.full(2, Kind.BINARY, np.uint8), version=np.ones(2, np.uint8),
                       conn=np.zeros(2, np.uint32), wall_ns=np.array([T0, T0 + 1]),
                       mono_ns=np.array([5, 6]), length=np.array([1, 1], np.uint32),
                       payloads=b"ab", inst_count=np.array([2, 3], np.uint32),
                       inst_keys=keys, has_instruments=True)
    raw = bytearray(fmt.encode_body(cols, fmt.CODEC_PLAIN))
    flags = fmt.FLAG_INSTRUMENTS | fmt.FLAG_KEY_DICT
    assert fmt.decode_body(bytes(raw), 2, fmt.CODEC_PLAIN, flags).inst_keys.tolist() == \
        keys.tolist()
    at = fmt.BODY_PREAMBLE.size + 16 * 2            # the count of distinct keys
    assert struct.unpack_from("<I", raw, at)[0] == 3
    for count, reason in ((6, "distinct instrument keys"), (0, "distinct instrument keys"),
                          (2, "past the 2 keys"), (10**6, "distinct instrument keys")):
        bad = bytearray(raw)
        struct.pack_into("<I", bad, at, count)
        with pytest.raises(ValueError, match=reason):
            fmt.decode_body(bytes(bad), 2, fmt.CODEC_PLAIN, flags)
    ids = at + 4 + 8 * 3                             # the one id plane
    bad = bytearray(raw)
    bad[ids + 4] = 3
    with pytest.raises(ValueError, match="key id 3 past the 3 keys"):
        fmt.decode_body(bytes(bad), 2, fmt.CODEC_PLAIN, flags)
    with pytest.raises(ValueError, match="shorter than its columns"):
        fmt.decode_body(bytes(raw[:at + 10]), 2, fmt.CODEC_PLAIN, flags)
    table = at + 4                                   # the 3 distinct keys, ascending
    assert struct.unpack_from("<3Q", raw, table) == (256265, 260105, 738561)
    for entries in ((260105, 256265, 738561), (256265, 256265, 738561)):
        bad = bytearray(raw)
        struct.pack_into("<3Q", bad, table, *entries)
        with pytest.raises(ValueError, match="not ascending and distinct"):
            fmt.decode_body(bytes(bad), 2, fmt.CODEC_PLAIN, flags)
    with pytest.raises(ValueError, match="dictionary but no keys"):
        fmt.decode_body(bytes(raw), 2, fmt.CODEC_PLAIN, fmt.FLAG_KEY_DICT)


def test_key_dictionary_that_lies_is_an_error_without_the_compiled_expansion(monkeypatch):
    monkeypatch.setattr(fmt, "_expand_keys", None)
    test_key_dictionary_that_lies_is_an_error_not_a_misread()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 2**64 - 1), st.integers(256_000, 256_040)),
                max_size=400))
def test_key_dictionary_is_numpys_unique(keys):
    """The compiled key dictionary against its plain twin, numpy.unique, and the block
    bytes it gives against those of the twin's fallback path."""
    from shrivenq._ext.key_dict import key_dictionary
    k = np.array(keys, dtype=np.uint64)
    distinct, ids = key_dictionary(k)
    want, inverse = np.unique(k, return_inverse=True)
    assert distinct.dtype == np.uint64 and ids.dtype == np.uint32
    assert distinct.tolist() == want.tolist() and ids.tolist() == inverse.ravel().tolist()
    compiled = fmt.encode_keys(k)
    saved, fmt._key_dictionary = fmt._key_dictionary, None
    try:
        assert fmt.encode_keys(k) == compiled
    finally:
        fmt._key_dictionary = saved


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=300, unique=True),
       st.lists(st.integers(0, 70_000), max_size=300), st.integers(1, 4))
def test_key_ids_expand_as_numpy_takes_them(table, ids, width):
    """The compiled expansion of a key dictionary's id planes against decode_body's numpy
    fallback: the same keys, or the same error for an id past the table."""
    from shrivenq._ext.key_dict import expand_keys
    table = np.array(sorted(table), dtype=np.uint64)
    ids = np.array(ids, dtype=np.uint32) & np.uint32((1 << (8 * width)) - 1)
    planes = np.concatenate([((ids >> (8 * (width - 1 - p))) & 0xFF).astype(np.uint8)
                             for p in range(width)]) if len(ids) else np.zeros(0, np.uint8)
    if len(ids) and int(ids.max()) >= len(table):
        with pytest.raises(ValueError, match=f"key id {int(ids.max())} past the {len(table)} "):
            expand_keys(table, planes, len(ids))
    else:
        assert expand_keys(table, planes, len(ids)).tolist() == table.take(ids).tolist()
    with pytest.raises(ValueError, match="7 bytes of planes for 2 ids"):
        expand_keys(table, np.zeros(7, np.uint8), 2)
    with pytest.raises(ValueError, match="key ids of 5 bytes"):
        expand_keys(table, np.zeros(10, np.uint8), 2)


def test_a_version_1_segment_repaired_by_this_writer_stays_version_1(tmp_path):
    """Recovery rebuilds a crashed segment's footer; for a version 1 segment the footer keeps
    saying format 1, so the builds that wrote it can still read it after a rollback."""
    seg = tmp_path / "kite" / "2025-11-20" / "ticks" / "000001.wal"
    seg.parent.mkdir(parents=True)
    footer_at = struct.unpack_from("<Q", GOLDEN_V1_SEGMENT, len(GOLDEN_V1_SEGMENT) - 24)[0]
    seg.write_bytes(GOLDEN_V1_SEGMENT[:footer_at])          # as a crash leaves it: no footer
    with WalWriter(tmp_path, "kite", "ticks", tz=UTC, fsync="never") as w:
        assert [r.action for r in w.recovery] == ["footer rebuilt"]
    data = seg.read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 1
    footer_at = struct.unpack_from("<Q", data, len(data) - 24)[0]
    stored = fmt.unpack_frame(data[footer_at:footer_at + fmt.FRAME_SIZE]).stored_len
    body = data[footer_at + fmt.FRAME_SIZE:footer_at + fmt.FRAME_SIZE + stored]
    assert fmt.unpack_footer(body).format == 1
    assert [r.payload for r in read_wal(seg)] == [b"frame%d" % i for i in range(6)]


def test_a_writer_behind_compresses_at_the_fast_level_and_loses_nothing(tmp_path):
    import threading
    w = WalWriter(tmp_path, "binance", "ticks", tz=UTC, level=19, block_bytes=4096,
                  fsync="never")
    release = threading.Event()
    write_block = w._write_block
    used = []                   # the compressor of each block, in order

    def slow_disk(blk, cctx):   # the writer thread stalls on its first block
        release.wait(10)
        used.append(cctx)
        write_block(blk, cctx)

    w._write_block = slow_disk
    payloads = [bytes([i]) * 5000 + b"%d" % i for i in range(12)]   # a block each
    try:
        for i, payload in enumerate(payloads):
            w.append(Kind.TEXT, payload, T0 + i, i)
        release.set()
        w.flush(timeout=30)
        behind = w.stats.fast_blocks
        # Keeping up (one block at a time), it stays at its own level.
        for i, payload in enumerate(payloads):
            w.append(Kind.TEXT, payload, T0 + 100 + i, 100 + i)
            w.flush(timeout=30)
    finally:
        release.set()
        w.close()
    assert 1 <= behind < len(payloads)
    assert w.stats.fast_blocks == behind
    # Two compressors: the fast one for the blocks taken while behind; keeping up, only the
    # writer's own.
    own = used[-1]
    assert used[-len(payloads):] == [own] * len(payloads)
    fast = [c for c in used if c is not own]
    assert len(fast) == behind and all(c is fast[0] for c in fast)
    assert [r.payload for r in read_wal(tmp_path / "binance")] == payloads * 2


@pytest.mark.parametrize("level", [23, -(1 << 17) - 1, "9", 2.0, True, None])
def test_a_zstd_level_out_of_range_is_refused(tmp_path, level):
    with pytest.raises(ConfigError, match="zstd level"):
        WalWriter(tmp_path, "kite", "ticks", tz=IST, level=level)


@pytest.mark.parametrize("level", [np.int64(9), 0, -5, 22])
def test_any_zstd_level_is_taken_and_reads_back(tmp_path, level):
    with WalWriter(tmp_path, "kite", "ticks", tz=IST, level=level, fsync="never") as w:
        w.append(Kind.TEXT, b"x" * 1000, T0, 0)
    assert read_wal(tmp_path / "kite").payloads() == [b"x" * 1000]


def test_decoded_uint32_columns_are_aligned_whatever_the_key_planes_leave():
    """Three keys in one byte plane put the columns after them at an odd offset in the
    body; the compiled readers take those columns as uint32 arrays, which must be aligned."""
    cols = fmt.Columns(kind=np.full(2, Kind.BINARY, np.uint8), version=np.ones(2, np.uint8),
                       conn=np.array([3, 4], np.uint32), wall_ns=np.array([T0, T0 + 1]),
                       mono_ns=np.array([5, 6]), length=np.array([1, 2], np.uint32),
                       payloads=b"abc", inst_count=np.array([1, 2], np.uint32),
                       inst_keys=np.array([7, 9, 7], dtype=np.uint64), has_instruments=True)
    raw = fmt.encode_body(cols, fmt.CODEC_PLAIN)
    got = fmt.decode_body(raw, 2, fmt.CODEC_PLAIN, fmt.FLAG_INSTRUMENTS | fmt.FLAG_KEY_DICT)
    for name in ("conn", "length", "inst_count"):
        column = getattr(got, name)
        assert column.flags.aligned, f"{name} is not aligned"
        assert column.tolist() == getattr(cols, name).tolist()
    assert got.inst_keys.tolist() == [7, 9, 7] and bytes(got.payloads) == b"abc"


@pytest.mark.parametrize("flags", [fmt.FLAG_INSTRUMENTS | fmt.FLAG_KEY_DICT,
                                   fmt.FLAG_INSTRUMENTS],    # version 1 blocks: plain keys
                         ids=["key dictionary", "plain keys"])
def test_decoded_columns_are_aligned_in_a_body_at_an_odd_address(flags):
    """A body handed over as a view at an odd address still decodes to aligned columns."""
    cols = fmt.Columns(kind=np.full(2, Kind.BINARY, np.uint8), version=np.ones(2, np.uint8),
                       conn=np.array([3, 4], np.uint32), wall_ns=np.array([T0, T0 + 1]),
                       mono_ns=np.array([5, 6]), length=np.array([1, 2], np.uint32),
                       payloads=b"abc", inst_count=np.array([1, 2], np.uint32),
                       inst_keys=np.array([7, 9, 7], dtype=np.uint64),
                       has_instruments=bool(flags & fmt.FLAG_KEY_DICT))
    raw = fmt.encode_body(cols, fmt.CODEC_PLAIN)
    got = fmt.decode_body(memoryview(bytearray(b"\0" + raw))[1:], 2, fmt.CODEC_PLAIN, flags)
    for name in ("wall_ns", "mono_ns", "conn", "length", "inst_count", "inst_keys"):
        column = getattr(got, name)
        assert column.flags.aligned, name
        assert column.tolist() == getattr(cols, name).tolist(), name


def _frames_and_controls(root, n=400):
    """A WAL of real Kite frames with text records among them, in small blocks."""
    from shrivenq.kite import KIND_FULL
    from shrivenq.kite.wire import encode_frame
    from shrivenq.sim.market import KiteMarket, default_universe
    rows = KiteMarket(default_universe(20), seed=7).ticks(3 * n, kind=KIND_FULL)
    expected = []
    with WalWriter(root, "kite", "ticks", tz=IST, block_bytes=20_000) as w:
        for i in range(n):
            if i % 9 == 4:
                kind, payload = Kind.TEXT, b'{"type":"message","n":%d}' % i
            else:
                kind, payload = Kind.BINARY, encode_frame(rows[3 * i:3 * i + 1 + i % 3])
            w.append(kind, payload, T0 + i * 1_000_000, i, conn=i % 2)
            expected.append((int(kind), i % 2, T0 + i * 1_000_000, i, payload, ()))
    return expected


def test_prepare_sees_packed_blocks_and_the_records_stay_whole(tmp_path):
    expected = _frames_and_controls(tmp_path)
    seen = []

    def prepare(cols):
        assert isinstance(cols.payloads, fmt.PackedPayloads)
        assert not cols.payloads.checked
        seen.append(len(cols.kind))
        return ("made for", len(cols.kind))

    batches = list(WalReader(tmp_path / "kite", "ticks", workers=1, prepare=prepare))
    assert len(batches) > 3 and len(seen) == len(batches)
    assert [b.prepared for b in batches] == [("made for", n) for n in seen]
    # Left unchecked by prepare: unpacked (and so checked) before the batch was handed on.
    assert all(b._data.checked for b in batches)
    # Control records read in place, frames unpacked on demand: the records are whole.
    got = [t for b in batches for t in as_tuples(b)]
    assert got == expected

    def decode_frames(cols):    # as Kite replay does: the frames straight to rows
        out = td.unpack_ticks(cols.payloads.packed, cols.payloads.lengths,
                              (cols.kind == Kind.BINARY).view(np.uint8), cols.wall_ns, cols.conn)
        if out is not None:     # checked only if it decoded the block
            cols.payloads.checked = True
        return out

    for workers in (1, 2):
        again = list(WalReader(tmp_path / "kite", "ticks", workers=workers,
                               prepare=decode_frames))
        assert sum(len(b.prepared[0]) for b in again) == sum(1 + i % 3 for i in range(400)
                                                             if i % 9 != 4)
        texts = [(b, i) for b in again for i in range(len(b)) if b.kind[i] == Kind.TEXT]
        assert [b.payload(i) for b, i in texts] == [e[4] for e in expected if e[0] == Kind.TEXT]
        assert all(isinstance(b._data, fmt.PackedPayloads) and b._data._payloads is None
                   for b, _ in texts), "a control record's payload unpacked the whole block"
        sub = [b.select(np.arange(len(b)) % 3 != 1) for b in again]
        assert [t for b in sub for t in as_tuples(b)] == [
            e for b in again for i, e in enumerate(expected[b.first_record:][:len(b)])
            if i % 3 != 1]
        assert [t for b in again for t in as_tuples(b)] == expected


def test_prepare_result_is_dropped_when_the_filters_cut_a_batch(tmp_path):
    _frames_and_controls(tmp_path)
    whole = list(WalReader(tmp_path / "kite", "ticks", workers=1, prepare=len))
    mid = int(whole[1].wall_ns[len(whole[1]) // 2])
    cut = list(WalReader(tmp_path / "kite", "ticks", workers=1, prepare=len, start_ns=mid))
    assert cut[0].prepared is None and len(cut[0]) < len(whole[1])
    assert [b.prepared for b in cut[1:]] == [b.prepared for b in whole[2:]]


def test_prepare_errors_are_reported_as_damaged_blocks(tmp_path):
    _frames_and_controls(tmp_path)
    first = next(iter(WalReader(tmp_path / "kite", "ticks", workers=1)))

    def prepare(cols):
        if int(cols.wall_ns[0]) == int(first.wall_ns[0]):
            raise ValueError("packet key out of order")
        return None

    with pytest.raises(WalCorruptError, match="packet key out of order"):
        list(WalReader(tmp_path / "kite", "ticks", workers=1, prepare=prepare))
    reader = WalReader(tmp_path / "kite", "ticks", workers=2, prepare=prepare,
                       on_corrupt="skip")
    rest = list(reader)
    assert len(reader.skipped) == 1 and "packet key out of order" in str(reader.skipped[0])
    assert sum(len(b) for b in rest) == 400 - len(first)
