"""Compaction (wal/compact.py): a closed segment rewritten into large blocks holds the same
records, byte for byte, is smaller, and is only ever put in place whole and checked."""

from __future__ import annotations

import fcntl
import os

import msgpack
import numpy as np
import pytest
from typer.testing import CliRunner

from shrivenq.cli import app
from shrivenq.sim.stream import kite_stream
from shrivenq.wal import IST, Kind, WalReader, WalWriter, inspect, open_segment, read_wal, verify
from shrivenq.wal import compact as C
from shrivenq.wal import format as fmt

T0 = 1_763_610_300_000_000_000          # 2025-11-20 09:15 IST


def write_capture_like(root, frames=3000, per_block=40, **kw):
    """Kite frames as capture writes them: a small block every ``per_block`` frames (capture
    seals one a second), with instrument keys, text and control records among them."""
    s = kite_stream()
    offsets = np.concatenate(([0], np.cumsum(s.lengths)[:-1]))
    key_at = np.concatenate(([0], np.cumsum(s.inst_counts))).astype(np.int64)
    kw.setdefault("segment_bytes", 150_000)
    with WalWriter(root, "kite", "ticks", tz=IST, level=-1, **kw) as w:
        for i in range(frames):
            o, n = int(offsets[i]), int(s.lengths[i])
            w.append(Kind.BINARY, s.payloads[o:o + n], T0 + i * 10**6, 5 + i, conn=i % 2,
                     instruments=s.inst_keys[key_at[i]:key_at[i + 1]])
            if i % 500 == 7:
                w.append(Kind.TEXT, b'{"type":"order"}', T0 + i * 10**6, 5 + i)
                w.append(Kind.SNAPSHOT_MARK, msgpack.packb({"session": "s", "snapshot": i}),
                         T0 + i * 10**6, 5 + i)
            if i % per_block == per_block - 1:
                w.flush()
    return w


def records(path):
    batch = read_wal(path)
    return [(int(batch.kind[i]), int(batch.version[i]), int(batch.conn[i]),
             int(batch.wall_ns[i]), int(batch.mono_ns[i]), batch.payload(i),
             tuple(batch.instruments(i).tolist())) for i in range(len(batch))]


def segment_paths(root):
    return sorted((root / "kite").rglob("ticks/*.wal"))


def test_compaction_keeps_every_record_and_makes_the_log_smaller(tmp_path):
    write_capture_like(tmp_path)
    before = records(tmp_path)
    paths = segment_paths(tmp_path)
    footers = [open_segment(p).footer for p in paths]
    sizes = [p.stat().st_size for p in paths]
    assert len(paths) >= 3

    reports = C.compact(tmp_path)

    assert [r.path for r in reports] == paths and all(r.compacted for r in reports)
    assert records(tmp_path) == before
    for p, old, size, r in zip(paths, footers, sizes, reports):
        seg = open_segment(p)
        new = seg.footer
        assert len(seg.blocks) < old.blocks and p.stat().st_size < size
        assert (r.blocks_before, r.blocks_after, r.bytes_before, r.bytes_after) == (
            old.blocks, len(seg.blocks), size, p.stat().st_size)
        assert (new.records, new.kinds, new.instruments, new.payload_bytes) == (
            old.records, old.kinds, old.instruments, old.payload_bytes)
        assert (new.first_wall_ns, new.last_wall_ns, new.closed_ns) == (
            old.first_wall_ns, old.last_wall_ns, old.closed_ns)
        assert new.compacted["blocks"] == old.blocks and new.level == old.level == -1
        assert (r.stored_before, r.stored_after) == (old.stored_bytes, new.stored_bytes)
    assert verify(tmp_path).clean
    assert all(s.compacted for s in inspect(tmp_path))
    assert not list(tmp_path.rglob("*.compacting"))


def test_a_compacted_segment_is_left_alone_the_second_time(tmp_path):
    write_capture_like(tmp_path, frames=600)
    C.compact(tmp_path)
    data = [p.read_bytes() for p in segment_paths(tmp_path)]
    reports = C.compact(tmp_path)
    assert all(not r.compacted and r.skipped == "already compacted" for r in reports)
    assert [p.read_bytes() for p in segment_paths(tmp_path)] == data


def test_damaged_and_unclosed_segments_are_left_exactly_as_they_are(tmp_path):
    write_capture_like(tmp_path, frames=1500)
    first = segment_paths(tmp_path)[0]
    seg = open_segment(first)
    damaged = bytearray(first.read_bytes())
    damaged[seg.blocks[1].offset + fmt.FRAME_SIZE + 3] ^= 0x40   # inside block 1's body
    first.write_bytes(bytes(damaged))
    second = segment_paths(tmp_path)[1]
    footer_damaged = bytearray(second.read_bytes())
    footer_damaged[-fmt.TRAILER_SIZE - 5] ^= 0x40                 # inside the footer
    second.write_bytes(bytes(footer_damaged))
    assert open_segment(second).state == "corrupt"
    # A writer that is still appending: its segment has no footer.
    w = WalWriter(tmp_path / "live", "kite", "ticks", tz=IST, block_bytes=500)
    try:
        for i in range(50):
            w.append(Kind.TEXT, b"x" * 100, T0 + i, i)
        w.flush()
        live = segment_paths(tmp_path / "live")[0]
        live_bytes = live.read_bytes()
        report, = C.compact(tmp_path / "live")
        assert not report.compacted and "open segment" in report.skipped
        assert live.read_bytes() == live_bytes
    finally:
        w.close()
    # The footer is good, so the damage shows only when the block is read: found, reported.
    report = C.compact(first)[0]
    assert report.failed and "block 1" in report.skipped and "checksum" in report.skipped
    assert first.read_bytes() == bytes(damaged)
    report = C.compact(second)[0]
    assert not report.compacted and "corrupt segment" in report.skipped
    assert second.read_bytes() == bytes(footer_damaged)
    assert not list(tmp_path.rglob("*.compacting"))


def test_a_copy_that_reads_back_different_is_never_put_in_place(tmp_path, monkeypatch):
    write_capture_like(tmp_path, frames=600)
    path = segment_paths(tmp_path)[0]
    original = path.read_bytes()
    concat = fmt.concat_columns

    def corrupting_concat(parts):
        cols = concat(parts)
        payloads = bytearray(cols.payloads)
        payloads[len(payloads) // 2] ^= 1          # a bug that changes one payload byte
        cols.payloads = bytes(payloads)
        return cols

    monkeypatch.setattr(fmt, "concat_columns", corrupting_concat)
    report = C.compact(path)[0]
    assert report.failed and "differs in payloads" in report.skipped
    assert path.read_bytes() == original
    assert not list(tmp_path.rglob("*.compacting"))


def test_a_leftover_temporary_file_is_never_read_and_is_overwritten(tmp_path):
    write_capture_like(tmp_path, frames=600)
    path = segment_paths(tmp_path)[0]
    leftover = path.with_name(f".{path.name}.compacting")
    leftover.write_bytes(path.read_bytes()[:5000])         # what a crash mid-way leaves
    before = records(tmp_path)
    assert verify(tmp_path).clean and len(verify(tmp_path).segments) == 1
    assert C.compact(path)[0].compacted
    assert records(tmp_path) == before and not leftover.exists()


def test_a_nearly_full_disk_is_left_to_the_live_writer(tmp_path, monkeypatch):
    write_capture_like(tmp_path, frames=600)
    path = segment_paths(tmp_path)[0]
    original = path.read_bytes()
    real = os.statvfs(tmp_path)

    class NearlyFull:
        f_frsize = real.f_frsize
        f_bavail = (len(original) + C.FREE_RESERVE_BYTES - 1) // real.f_frsize

    monkeypatch.setattr(C.os, "statvfs", lambda p: NearlyFull)
    report = C.compact(path)[0]
    assert not report.compacted and "not enough free disk" in report.skipped
    assert path.read_bytes() == original and not list(tmp_path.rglob("*.compacting"))
    NearlyFull.f_bavail += 2 * len(original) // real.f_frsize + 1
    assert C.compact(path)[0].compacted


def test_a_compactor_that_locked_a_copy_another_one_gave_up_leaves_the_name_alone(
        tmp_path, monkeypatch):
    """B opens the temporary name while A holds it; A fails and unlinks it; C creates its
    own copy there. B's lock then succeeds on A's orphan: B must not rename C's file."""
    write_capture_like(tmp_path, frames=600)
    path = segment_paths(tmp_path)[0]
    tmp = path.with_name(f".{path.name}.compacting")
    original = path.read_bytes()
    real_open = os.open

    def open_then_others_move_on(p, flags, mode=0o777):
        fd = real_open(p, flags, mode)
        if p == tmp:
            os.unlink(tmp)                        # A gives up ...
            tmp.write_bytes(b"C's copy, half written")     # ... and C starts
        return fd

    monkeypatch.setattr(C.os, "open", open_then_others_move_on)
    report = C.compact_segment(path)
    assert not report.compacted and "another compaction" in report.skipped
    assert path.read_bytes() == original and tmp.read_bytes() == b"C's copy, half written"


def test_a_version_1_segment_is_left_readable_by_the_builds_that_wrote_it(tmp_path):
    from test_wal_roundtrip import GOLDEN_V1_SEGMENT
    seg = tmp_path / "kite" / "2025-11-20" / "ticks" / "000001.wal"
    seg.parent.mkdir(parents=True)
    seg.write_bytes(GOLDEN_V1_SEGMENT)
    report = C.compact_segment(seg, block_bytes=1 << 30)
    assert not report.compacted and "format version 1" in report.skipped
    assert seg.read_bytes() == GOLDEN_V1_SEGMENT


def test_footer_keys_of_a_later_build_are_kept(tmp_path):
    write_capture_like(tmp_path, frames=600)
    path = segment_paths(tmp_path)[0]
    seg = open_segment(path)
    footer = seg.footer
    footer.extra = {"session_id": "later-build", "weights": [1, 2]}
    end = seg.blocks[-1].offset + seg.blocks[-1].frame.size
    with open(path, "r+b") as f:           # the same segment, as a later build closed it
        f.truncate(end)
        f.seek(end)
        f.write(C.footer_bytes(footer, end, len(seg.blocks)))
    assert open_segment(path).footer.extra == footer.extra
    assert C.compact_segment(path).compacted
    after = open_segment(path).footer
    assert after.extra == {"session_id": "later-build", "weights": [1, 2]}
    assert after.compacted is not None


def test_blocks_that_cannot_merge_leave_the_segment_as_written(tmp_path):
    """Blocks alternating between records with instrument keys and without cannot merge
    (a block has keys for all its records or none): the copy would gain nothing."""
    root = tmp_path
    with WalWriter(root, "kite", "ticks", tz=IST) as w:
        for i in range(40):
            w.append(Kind.BINARY, b"\x00\x01" + bytes(30), T0 + i, i,
                     instruments=[256265] if i % 2 else None)
            w.flush()
    path = segment_paths(root)[0]
    original = path.read_bytes()
    report = C.compact_segment(path)
    assert not report.compacted and "cannot be merged" in report.skipped
    assert path.read_bytes() == original and not list(root.rglob("*.compacting"))


def test_a_directory_that_will_not_fsync_after_the_rename_is_still_compacted(
        tmp_path, monkeypatch, caplog):
    write_capture_like(tmp_path, frames=600)
    before = records(tmp_path)
    path = segment_paths(tmp_path)[0]

    def failing_fsync_dir(p):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(C, "fsync_dir", failing_fsync_dir)
    report = C.compact_segment(path)
    assert report.compacted and open_segment(path).footer.compacted is not None
    assert "fsyncing its directory failed" in caplog.text and records(tmp_path) == before


def test_a_segment_that_cannot_be_looked_at_after_the_claim_leaves_no_copy(tmp_path,
                                                                           monkeypatch):
    write_capture_like(tmp_path, frames=600)
    path = segment_paths(tmp_path)[0]
    original = path.read_bytes()
    real_stat = os.stat

    def stat(p, *a, **kw):
        if p == path:
            raise PermissionError(13, "Permission denied", str(p))
        return real_stat(p, *a, **kw)

    monkeypatch.setattr(C.os, "stat", stat)
    with pytest.raises(C.WalIOError, match="Permission denied"):
        C.compact_segment(path)
    monkeypatch.undo()
    assert path.read_bytes() == original and not list(tmp_path.rglob("*.compacting"))


def test_two_compactions_never_write_the_same_copy(tmp_path):
    write_capture_like(tmp_path, frames=600)
    path = segment_paths(tmp_path)[0]
    original = path.read_bytes()
    fd = os.open(path.with_name(f".{path.name}.compacting"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)                  # another compactor is at work
        report = C.compact(path)[0]
    finally:
        os.close(fd)
    assert not report.compacted and "another compaction" in report.skipped
    assert path.read_bytes() == original


def test_a_compaction_that_finds_the_segment_compacted_meanwhile_leaves_it(tmp_path,
                                                                             monkeypatch):
    write_capture_like(tmp_path, frames=600)
    path = segment_paths(tmp_path)[0]
    before = records(tmp_path)
    held = C.open_segment_held
    theirs = []

    def opened_then_compacted_elsewhere(p):
        old = held(p)                   # this compaction has the old file open ...
        monkeypatch.setattr(C, "open_segment_held", held)
        assert C.compact_segment(p).compacted          # ... when another one finishes
        theirs.append(path.read_bytes())
        return old

    monkeypatch.setattr(C, "open_segment_held", opened_then_compacted_elsewhere)
    report = C.compact_segment(path)
    assert not report.compacted and "meanwhile" in report.skipped
    assert path.read_bytes() == theirs[0] and records(tmp_path) == before
    assert not list(tmp_path.rglob("*.compacting"))


def test_a_reader_part_way_through_reads_the_files_it_opened_whole(tmp_path):
    write_capture_like(tmp_path, frames=1500)
    before = records(tmp_path)
    assert len(segment_paths(tmp_path)) >= 2
    reader = WalReader(tmp_path / "kite", "ticks", workers=1)
    batches = iter(reader)
    first = next(batches)          # the next segment is already opened by then
    assert all(r.compacted for r in C.compact(tmp_path))
    rest = list(batches)
    assert not reader.skipped
    got = [first, *rest]
    assert sum(len(b) for b in got) == len(before)
    assert [b.payload(i) for b in got for i in range(len(b))] == [r[5] for r in before]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_read_holds_a_few_segment_files_open_not_all(tmp_path, workers):
    """Holding each classified file open for compaction's sake must not hold them all: a
    read of the last part of many segments (or all of them) keeps two or three open."""
    write_capture_like(tmp_path, frames=3000, segment_bytes=20_000)
    paths = segment_paths(tmp_path)
    assert len(paths) >= 25
    last = open_segment(paths[-1])

    def open_files():
        return len(os.listdir("/proc/self/fd"))

    base = open_files()
    for start in (None, last.footer.first_wall_ns):
        peak, n = 0, 0
        reader = WalReader(tmp_path / "kite", "ticks", start_ns=start, workers=workers)
        for batch in reader:
            peak, n = max(peak, open_files() - base), n + len(batch)
        assert n and peak <= 2 + 2 * workers, (start, peak)
        assert open_files() == base
    assert n == last.records


def test_a_writer_with_compact_compacts_each_segment_it_closes(tmp_path):
    w = write_capture_like(tmp_path / "compacted", frames=1500, compact=True)
    paths = segment_paths(tmp_path / "compacted")
    footers = [open_segment(p).footer for p in paths]
    assert len(paths) >= 2 and all(f.compacted is not None for f in footers)
    assert w.stats.segments_compacted == len(paths)
    assert w.stats.bytes_on_disk == sum(f.stored_bytes for f in footers)
    assert w.stats.bytes_on_disk < w.stats.bytes_written
    plain = write_capture_like(tmp_path / "plain", frames=1500)
    assert records(tmp_path / "compacted") == records(tmp_path / "plain")
    assert plain.stats.segments_compacted == 0
    assert all(open_segment(p).footer.compacted is None
               for p in segment_paths(tmp_path / "plain"))


def test_a_writer_compacts_the_segment_its_recovery_closed(tmp_path):
    write_capture_like(tmp_path, frames=600, segment_bytes=1 << 30)
    before = records(tmp_path)
    path, = segment_paths(tmp_path)
    seg = open_segment(path)
    with open(path, "r+b") as f:          # what a crash between two blocks leaves
        f.truncate(seg.blocks[-1].offset + seg.blocks[-1].frame.size)
    assert open_segment(path).state == "open"
    w = WalWriter(tmp_path, "kite", "ticks", tz=IST, compact=True)
    w.close()
    footer = open_segment(path).footer
    assert [r.action for r in w.recovery] == ["footer rebuilt"]
    assert footer.compacted is not None and footer.recovered is not None
    assert records(tmp_path) == before and verify(tmp_path).clean
    # Space saved on a segment an earlier writer wrote is not this writer's to report.
    assert w.stats.segments_compacted == 0 and w.stats.compaction_saved_bytes == 0


def test_a_compaction_that_fails_costs_the_writer_nothing_but_space(tmp_path, monkeypatch,
                                                                     caplog):
    def full_disk(path, **kw):
        raise C.WalIOError(path, "No space left on device")

    monkeypatch.setattr(C, "compact_segment", full_disk)
    w = write_capture_like(tmp_path / "a", frames=1500, compact=True)
    paths = segment_paths(tmp_path / "a")
    assert len(w.compactor.errors) == len(paths) and "No space left" in w.compactor.errors[0]
    assert "stays as written" in caplog.text
    assert w.stats.segments_compacted == 0 and w.stats.bytes_on_disk == w.stats.bytes_written
    write_capture_like(tmp_path / "b", frames=1500)
    assert records(tmp_path / "a") == records(tmp_path / "b") and verify(tmp_path / "a").clean


def test_footer_fields_from_disk_are_checked():
    good = fmt.Footer(0, 0, None, None, None, None, 0, 0, {}, {},
                      np.zeros(0, dtype=fmt.INDEX_DTYPE), level=3, compacted={"blocks": 2})
    back = fmt.unpack_footer(good.pack())
    assert (back.level, back.compacted) == (3, {"blocks": 2})
    m = msgpack.unpackb(good.pack(), strict_map_key=False)
    for key, value in (("level", "fast"), ("level", 99), ("compacted", [1])):
        with pytest.raises(ValueError, match=key):
            fmt.unpack_footer(msgpack.packb({**m, key: value}))


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_compacts_and_reports_what_it_did(tmp_path):
    write_capture_like(tmp_path, frames=1500)
    before = records(tmp_path)
    n = len(segment_paths(tmp_path))
    result = cli("wal", "compact", tmp_path)
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("compacted: ") for line in result.output.splitlines()) == n
    assert f"{n} of {n} segments compacted" in result.output
    assert records(tmp_path) == before
    again = cli("wal", "compact", tmp_path)
    assert again.exit_code == 0 and f"0 of {n} segments compacted; {n} left" in again.output
    shown = cli("wal", "inspect", tmp_path)
    assert shown.output.count("closed, compacted") == n


@pytest.mark.parametrize("args, words", [
    (["--level", "40"], "--level 40"),
    ([], "no such file"),
])
def test_cli_compact_refuses_bad_arguments_clearly(tmp_path, args, words):
    result = cli("wal", "compact", tmp_path / "nothing-here", *args)
    assert result.exit_code == 1 and words in result.output
