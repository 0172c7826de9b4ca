"""The realistic tick stream the WAL's compression tests and benchmarks measure (it lives with
the simulator, not in shrivenq.wal, because storage knows nothing about exchanges).

Full-mode Kite frames from ``shrivenq.sim.market.KiteMarket`` (per-instrument random walks
on the tick grid, persistent 5-level books, cumulative volume, many instruments interleaved),
several packets per frame, as a WalWriter.append_batch call wants them. Generating costs about
30 us per tick, so results are cached in memory and in ``cache/`` (keyed by the parameters and
the simulator's source, so a changed simulator regenerates).
"""

from __future__ import annotations

import functools
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shrivenq.kite import KIND_FULL
from shrivenq.kite import wire as _wire
from shrivenq.kite.wire import encode_frame
from shrivenq.sim import market as _market
from shrivenq.sim.market import KiteMarket, default_universe
from shrivenq.wal.records import Kind

_CACHE = Path(__file__).resolve().parents[2] / "cache"
_sample = sys.modules[__name__]


@dataclass(frozen=True)
class SampleStream:
    payloads: bytes          # the frames back to back
    lengths: np.ndarray      # u32 per frame
    wall_ns: np.ndarray      # i64 per frame
    mono_ns: np.ndarray      # i64 per frame
    inst_keys: np.ndarray    # u64: each frame's packet tokens, frames back to back
    inst_counts: np.ndarray  # u32: packets per frame
    ticks: int

    @property
    def frames(self) -> int:
        return len(self.lengths)

    def append_to(self, writer, conn: int = 1) -> int:
        return writer.append_batch(Kind.BINARY, self.payloads, self.lengths, self.wall_ns,
                                   self.mono_ns, conn, self.inst_keys, self.inst_counts)

    def frame(self, i: int) -> bytes:
        o = int(self.lengths[:i].sum())
        return self.payloads[o:o + int(self.lengths[i])]


def _generate(ticks: int, seed: int, instruments: int, max_packets: int) -> SampleStream:
    rng = np.random.default_rng(seed)
    market = KiteMarket(default_universe(instruments), seed=seed)
    rows = market.ticks(ticks, KIND_FULL, rate_per_instrument=2.0)
    sizes = []
    left = ticks
    while left:
        k = min(int(rng.integers(1, max_packets + 1)), left)
        sizes.append(k)
        left -= k
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    frames = [encode_frame(rows[bounds[i]:bounds[i + 1]]) for i in range(len(sizes))]
    n = len(frames)
    start = 1_763_610_300_000_000_000  # 2025-11-20 09:15 IST
    wall = start + np.cumsum(rng.integers(20_000, 400_000, n)).astype(np.int64)
    mono = wall - start + 5_000_000_000 + rng.integers(0, 2_000, n)
    return SampleStream(b"".join(frames), np.array([len(f) for f in frames], dtype=np.uint32),
                        wall, mono.astype(np.int64), rows["token"].astype(np.uint64),
                        np.array(sizes, dtype=np.uint32), ticks)


@functools.lru_cache(maxsize=4)
def kite_stream(ticks: int = 150_000, seed: int = 5, instruments: int = 200,
                max_packets: int = 8) -> SampleStream:
    """A realistic full-mode stream of ``ticks`` packets in frames of 1..max_packets."""
    src = b"".join(Path(m.__file__).read_bytes() for m in (_market, _wire, _sample))
    key = hashlib.sha1(src + repr((ticks, seed, instruments, max_packets)).encode()).hexdigest()
    path = _CACHE / f"wal_sample_{key[:16]}.npz"
    if path.exists():
        try:
            z = np.load(path)
            return SampleStream(z["payloads"].tobytes(), z["lengths"], z["wall_ns"],
                                z["mono_ns"], z["inst_keys"], z["inst_counts"], int(z["ticks"]))
        except Exception:
            pass
    s = _generate(ticks, seed, instruments, max_packets)
    if _CACHE.is_dir():
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, payloads=np.frombuffer(s.payloads, np.uint8), lengths=s.lengths,
                 wall_ns=s.wall_ns, mono_ns=s.mono_ns, inst_keys=s.inst_keys,
                 inst_counts=s.inst_counts, ticks=s.ticks)
        tmp.replace(path)
    return s
