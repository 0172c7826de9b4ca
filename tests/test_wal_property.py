"""Property: any sequence of records, block sizes, segment sizes, day changes and append
styles round-trips exactly, with every codec this build can write."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shrivenq.kite import KIND_FULL, KIND_QUOTE
from shrivenq.kite.wire import encode_frame
from shrivenq.sim.market import KiteMarket, default_universe
from shrivenq.wal import CODEC_PLAIN, CODEC_TICK_DELTA, WalWriter, read_wal, tick_delta_available
from shrivenq.wal.layout import IST, UTC

_m = KiteMarket(default_universe(8), seed=3)
FRAMES = [encode_frame(_m.ticks(k, KIND_FULL if k % 2 else KIND_QUOTE)) for k in
          (1, 2, 3, 5, 1, 4, 2, 7, 1, 1, 3)]
CODECS = [CODEC_PLAIN] + ([CODEC_TICK_DELTA] if tick_delta_available() else [])
DAY = 86_400 * 10**9
T0 = 1_763_610_300_000_000_000

payloads = st.one_of(st.binary(max_size=300), st.sampled_from(FRAMES),
                     st.sampled_from(FRAMES).map(lambda f: f[:-3]),      # a cut frame
                     st.sampled_from(FRAMES).map(lambda f: f + b"\x00"))
record = st.tuples(
    st.integers(0, 255),                                    # kind
    payloads,
    st.integers(-3 * DAY, 3 * DAY),                         # wall offset from T0
    st.integers(-2**62, 2**62),                             # mono
    st.integers(0, 2**32 - 1),                              # conn
    st.one_of(st.none(), st.lists(st.integers(0, 2**64 - 1), max_size=4)),
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recs=st.lists(record, max_size=60), block=st.integers(1, 3000),
       segment=st.integers(200, 6000), batch_every=st.integers(0, 7),
       codec=st.sampled_from(CODECS), tz=st.sampled_from([IST, UTC]))
def test_anything_round_trips(recs, block, segment, batch_every, codec, tz):
    root = tempfile.mkdtemp(prefix="walprop")
    try:
        w = WalWriter(root, "p", "ticks", tz=tz, block_bytes=block, segment_bytes=segment,
                      codec=codec, fsync="never")
        i = 0
        while i < len(recs):
            if batch_every and i % batch_every == 0:
                chunk = recs[i:i + batch_every]
                counts = [len(r[5] or []) for r in chunk]
                keys = [k for r in chunk for k in (r[5] or [])]
                w.append_batch([r[0] for r in chunk], b"".join(r[1] for r in chunk),
                               [len(r[1]) for r in chunk], [T0 + r[2] for r in chunk],
                               [r[3] for r in chunk], [r[4] for r in chunk],
                               instruments=np.array(keys, dtype=np.uint64),
                               instrument_counts=counts)
                i += len(chunk)
            else:
                k, p, wall, mono, conn, inst = recs[i]
                w.append(k, p, T0 + wall, mono, conn=conn, instruments=inst)
                i += 1
        w.close()
        if not recs:
            return
        got = read_wal(f"{root}/p")
        assert got.payloads() == [r[1] for r in recs]
        assert got.kind.tolist() == [r[0] for r in recs]
        assert got.wall_ns.tolist() == [T0 + r[2] for r in recs]
        assert got.mono_ns.tolist() == [r[3] for r in recs]
        assert got.conn.tolist() == [r[4] for r in recs]
        assert [got.instruments(j).tolist() for j in range(len(got))] == [
            list(r[5] or []) for r in recs]
    finally:
        shutil.rmtree(root, ignore_errors=True)
