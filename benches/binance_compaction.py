"""What compaction does to a Binance ticks segment as capture writes it: size and time.

    .venv/bin/python benches/binance_compaction.py [--messages 60000]

Writes depthUpdates of two symbols from the simulator's market (about 390 B of JSON each)
at capture's zstd level (9), a block per 8 kB of payloads (about one second of two symbols
at 100 ms), compacts the segment and prints sizes and the compaction rate. Figures for the
README's and docs/PERFORMANCE.md's statements about Binance compaction.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from shrivenq.capture.binance import WAL_LEVEL
from shrivenq.sim.binance_market import BinanceMarket, dumps
from shrivenq.wal import UTC, Kind, WalWriter
from shrivenq.wal.compact import compact_segment

T0 = 1_763_600_000_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="binance-compaction-"))
    try:
        market = BinanceMarket(seed=4, depth=60)
        syms = ["BTCUSDT", "ETHUSDT"]
        payload = 0
        with WalWriter(tmp, "binance", "ticks", tz=UTC, fsync="never", level=WAL_LEVEL,
                       block_bytes=8000) as w:
            for i in range(args.messages):
                s = syms[i % 2]
                raw = dumps({"stream": f"{s.lower()}@depth@100ms",
                             "data": market.depth_update(s)}).encode()
                payload += len(raw)
                w.append(Kind.TEXT, raw, T0 + i * 50_000_000, i)
        segment, = tmp.rglob("*.wal")
        start = time.perf_counter()
        report = compact_segment(segment)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.messages:,} depth messages, {payload / 1e6:.1f} MB of JSON: "
          f"{report.bytes_before / 1e6:.2f} MB as written ({report.blocks_before:,} blocks), "
          f"{report.bytes_after / 1e6:.2f} MB compacted ({report.blocks_after} blocks, "
          f"{report.bytes_after / report.bytes_before:.0%}); compaction {seconds:.1f} s, "
          f"{payload / seconds / 1e6:.1f} MB of JSON a second")


if __name__ == "__main__":
    main()
