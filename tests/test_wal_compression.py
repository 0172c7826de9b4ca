"""Compression on the realistic tick stream (random walks on the tick grid, persistent
5-level books, cumulative volume, 200 instruments interleaved): compact, and still
byte-exact."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from shrivenq.capture.kite import WAL_LEVEL as KITE_WAL_LEVEL
from shrivenq.wal import (
    CODEC_PLAIN, CODEC_TICK_DELTA, IST, WalWriter, inspect, read_wal, tick_delta_available)
from shrivenq.sim.stream import kite_stream

needs_tick_delta = pytest.mark.skipif(not tick_delta_available(),
                                      reason="shrivenq._ext.tick_delta is not built")


@pytest.fixture(scope="module")
def stream():
    return kite_stream()


def plain_zstd_bytes(data: bytes) -> int:
    c = zstandard.ZstdCompressor(level=1)
    return sum(len(c.compress(data[i:i + (1 << 20)])) for i in range(0, len(data), 1 << 20))


def write(stream, root, codec, level=1):
    with WalWriter(root, "kite", tz=IST, codec=codec, fsync="never", level=level) as w:
        stream.append_to(w)
    return sum(p.stat().st_size for p in root.rglob("*.wal"))


def check_exact(stream, root):
    b = read_wal(root / "kite")
    assert bytes(b.data) == stream.payloads
    assert np.array_equal(b.length, stream.lengths)
    assert np.array_equal(b.wall_ns, stream.wall_ns)
    assert np.array_equal(b.mono_ns, stream.mono_ns)
    assert np.array_equal(b.inst_keys, stream.inst_keys)
    assert np.array_equal(b.inst_count, stream.inst_counts)


def test_stream_is_realistic(stream):
    assert stream.ticks == 150_000 and 184 < len(stream.payloads) / stream.ticks < 186
    assert len(np.unique(stream.inst_keys)) == 200


@needs_tick_delta
@pytest.mark.parametrize("level", [1, KITE_WAL_LEVEL])
def test_tick_codec_is_compact_and_exact(stream, tmp_path, level):
    """At level 1 and at the level Kite capture writes (below zero: cheaper to read)."""
    size = write(stream, tmp_path, CODEC_TICK_DELTA, level)
    per_tick = size / stream.ticks
    zstd_per_tick = plain_zstd_bytes(stream.payloads) / stream.ticks
    assert per_tick <= 25.0, f"{per_tick:.1f} B/tick"
    assert per_tick < zstd_per_tick / 2
    check_exact(stream, tmp_path)
    (s,) = inspect(tmp_path)
    assert s.ratio > 7 and len(s.instruments) == 200
    assert sum(s.instruments.values()) == stream.ticks


def test_plain_codec_costs_little_over_plain_zstd(stream, tmp_path):
    size = write(stream, tmp_path, CODEC_PLAIN)
    assert size <= plain_zstd_bytes(stream.payloads) * 1.15
    check_exact(stream, tmp_path)


@needs_tick_delta
def test_codecs_mix_in_one_stream(stream, tmp_path):
    n = 3000
    half = int(stream.lengths[:n].sum())
    for codec, sl in ((CODEC_PLAIN, slice(0, n)), (CODEC_TICK_DELTA, slice(n, 2 * n))):
        lengths = stream.lengths[sl]
        start = int(stream.lengths[:sl.start].sum())
        with WalWriter(tmp_path, "kite", tz=IST, codec=codec) as w:
            w.append_batch(1, stream.payloads[start:start + int(lengths.sum())], lengths,
                           stream.wall_ns[sl], stream.mono_ns[sl])
    b = read_wal(tmp_path / "kite")
    assert bytes(b.data) == stream.payloads[:half + int(stream.lengths[n:2 * n].sum())]
