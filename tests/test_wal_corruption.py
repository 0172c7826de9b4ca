"""Flipping any single byte of a segment is detected, every time, and no reader setting ever
returns wrong data because of it."""

from __future__ import annotations

import numpy as np
import pytest

from shrivenq.errors import WalError
from shrivenq.wal import Kind, WalReader, WalWriter, open_segment, read_wal, verify
from shrivenq.wal import format as fmt

T0 = 1_763_610_300_000_000_000


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
    root = tmp_path_factory.mktemp("wal")
    with WalWriter(root, "v", block_bytes=120) as w:
        for i in range(40):
            w.append(Kind.BINARY if i % 7 else Kind.TEXT, b"%03d" % i * (1 + i % 9),
                     T0 + i * 1000, i, conn=i % 2, instruments=[i % 4, 99])
    seg = next(root.rglob("*.wal"))
    return seg, seg.read_bytes(), read_wal(seg)


def same(a, b) -> bool:
    return (a.payloads() == b.payloads() and np.array_equal(a.wall_ns, b.wall_ns)
            and np.array_equal(a.mono_ns, b.mono_ns) and np.array_equal(a.kind, b.kind)
            and np.array_equal(a.conn, b.conn) and np.array_equal(a.inst_keys, b.inst_keys))


def test_every_single_byte_flip_is_detected(segment, tmp_path):
    seg, data, original = segment
    assert 800 < len(data) < 6000 and len(open_segment(seg).blocks) >= 4
    assert open_segment(seg).state == "closed"
    target = tmp_path / "v" / "2025-11-20" / "ticks" / "000001.wal"
    target.parent.mkdir(parents=True)
    undetected, wrong = [], []
    for pos in range(len(data)):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos % 8)
        target.write_bytes(flipped)
        if verify(target).clean:
            undetected.append(pos)
        for mode in ("raise", "skip"):
            try:
                got = WalReader(target, on_corrupt=mode).read()
            except WalError:
                continue
            # Whatever a reader returns must be true: the original records, or in skip
            # mode a subsequence of them with the skipped blocks reported.
            if mode == "raise" and not same(got, original):
                wrong.append((pos, mode))
            if mode == "skip" and not set(got.payloads()) <= set(original.payloads()):
                wrong.append((pos, mode))
    assert undetected == []
    assert wrong == []


def test_skip_mode_reports_the_block_and_reads_on(segment, tmp_path):
    seg, data, original = segment
    s = open_segment(seg)
    victim = s.blocks[1]
    flipped = bytearray(data)
    flipped[victim.offset + fmt.FRAME_SIZE + 3] ^= 0x10
    target = tmp_path / "000001.wal"
    target.write_bytes(flipped)
    with pytest.raises(WalError) as info:
        read_wal(target)
    assert "block 1 at byte %d" % victim.offset in str(info.value)
    assert "checksum" in str(info.value)
    r = WalReader(target, on_corrupt="skip")
    got = r.read()
    lost = victim.frame.records
    assert len(got) == len(original) - lost
    assert got.payloads() == original.payloads()[:victim.frame.first_record] + \
        original.payloads()[victim.frame.first_record + lost:]
    assert len(r.skipped) == 1 and r.skipped[0].block == 1


def test_flipped_frame_header_of_a_footerless_segment(segment, tmp_path):
    seg, data, original = segment
    s = open_segment(seg)
    body = bytearray(data[:s.good_end])           # the footer gone, as after a crash
    body[s.blocks[2].offset + 9] ^= 0x01          # block number field of block 2
    target = tmp_path / "000001.wal"
    target.write_bytes(body)
    with pytest.raises(WalError, match="block 2"):
        read_wal(target)
    assert not verify(target).clean
