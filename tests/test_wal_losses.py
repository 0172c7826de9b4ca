"""Data lost from a WAL other than by a crash (a segment deleted, emptied, cut short or
unreadable) is reported, by readers and by verify, whatever the time range read and however
many threads read; and nothing a crash leaves, or that lies outside the range read, is
reported as lost. Repair and a new writer's recovery never hide such a loss."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shrivenq.errors import WalCorruptError
from shrivenq.wal import Kind, WalReader, WalWriter, open_segment, verify

DAY = 86_400 * 10**9
T0 = 1_763_596_800_000_000_000 + 3600 * 10**9     # 2025-11-20 01:00 UTC


@pytest.fixture(scope="module")
def two_days(tmp_path_factory) -> Path:
    """Two days of 2,000 records each, about 8 segments a day."""
    root = tmp_path_factory.mktemp("two_days")
    with WalWriter(root, "v", block_bytes=400, segment_bytes=4000, fsync="never") as w:
        for d in range(2):
            for i in range(2000):
                w.append(Kind.BINARY, b"%d:%06d" % (d, i) + b"x" * (i % 20),
                         T0 + d * DAY + i * 10**6, i, instruments=[i % 3])
    return root


def copy_of(root: Path, tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    days = sorted(d for d in (copy / "v").iterdir() if d.is_dir())
    return copy, *[sorted((d / "ticks").glob("*.wal")) for d in days]


def read(path, **kw) -> list[tuple]:
    """(records, error, skipped) with one thread and with two: they must agree."""
    out = []
    for workers in (1, 2):
        r = WalReader(path, workers=workers, **kw)
        n, err = 0, None
        try:
            n = sum(len(b) for b in r.batches())
        except WalCorruptError as exc:
            err = str(exc)
        out.append((n, err, [str(p) for p in r.skipped]))
    assert out[0] == out[1]
    return out[0]


def test_a_whole_capture_reads_clean(two_days):
    assert read(two_days / "v") == (4000, None, [])
    assert verify(two_days).clean


@pytest.mark.parametrize("damage", ["emptied", "cut at a block boundary", "cut mid-block"])
def test_a_middle_segment_that_lost_its_end_is_reported_and_repair_does_not_hide_it(
        two_days, tmp_path, damage):
    copy, day1, _ = copy_of(two_days, tmp_path)
    middle = day1[2]
    seg = open_segment(middle)
    keep = {"emptied": 0, "cut at a block boundary": seg.blocks[1].offset,
            "cut mid-block": seg.blocks[1].offset + 30}[damage]
    middle.write_bytes(middle.read_bytes()[:keep])
    n, err, _ = read(copy / "v")
    assert err is not None and middle.name in err and "later segments exist" in err
    n, err, skipped = read(copy / "v", on_corrupt="skip")
    assert err is None and n < 4000 and any(middle.name in p for p in skipped)
    assert not verify(copy).clean
    # A new writer's recovery and verify --repair leave it as it is: the loss stays visible.
    WalWriter(copy, "v").close()
    verify(copy, repair=True)
    assert middle.stat().st_size == keep
    assert read(copy / "v")[1] is not None and not verify(copy).clean


def test_a_hole_or_a_cut_outside_the_time_range_read_is_not_a_loss(two_days, tmp_path):
    copy, day1, day2 = copy_of(two_days, tmp_path)
    day2[0].unlink()                                  # the start of day 2
    middle = day1[2]
    middle.write_bytes(middle.read_bytes()[:open_segment(middle).blocks[1].offset])
    after_cut = open_segment(day1[3]).blocks[0].frame.min_wall_ns
    # Wholly inside day 1, after the cut: neither loss can hold records of the range.
    n, err, skipped = read(copy / "v", start_ns=after_cut + 1, end_ns=T0 + 1900 * 10**6)
    assert err is None and skipped == [] and n > 0
    # Nor can the hole at the start of day 2 hold records of day 1, whatever day 1's last
    # record was: a day's directory holds only that day.
    assert read(copy / "v", start_ns=after_cut + 1, end_ns=T0 + DAY - 3600 * 10**9)[1] is None
    # A range that takes in the start of day 2 reaches the hole.
    assert "missing" in read(copy / "v", start_ns=T0 + DAY - 10**9)[1]


def test_bytes_appended_to_an_older_segment_lose_nothing_and_repair_cuts_them(two_days,
                                                                               tmp_path):
    copy, day1, _ = copy_of(two_days, tmp_path)
    closed = day1[1].read_bytes()
    day1[1].write_bytes(closed + b"\x00junk" * 100)
    assert read(copy / "v") == (4000, None, [])
    assert not verify(copy).clean
    verify(copy, repair=True)
    assert day1[1].read_bytes() == closed and verify(copy).clean


def test_a_file_that_is_not_a_segment_is_reported_only_where_it_matters(two_days, tmp_path):
    copy, day1, _ = copy_of(two_days, tmp_path)
    day1[3].write_bytes(b"not a segment" * 300)
    with pytest.raises(Exception, match="bad magic"):
        list(WalReader(copy / "v").batches())
    n, err, skipped = read(copy / "v", on_corrupt="skip")
    assert err is None and len(skipped) == 1 and day1[3].name in skipped[0]
    assert read(copy / "v", start_ns=T0 + DAY)[1] is None       # day 2 only
