"""The Binance pair reader with SSSE3 against the scalar scan alone, alternated in one
process on the same messages (``shrivenq._ext.binance_depth._use_simd``): on this shared
machine, whose speed moves by up to 2x within minutes, only a paired comparison tells a
change of this size.

    .venv/bin/python benches/ab_pair_reader.py [--rounds 40]

Prints the median per reader of decode + apply (the Binance bench's 2,000 20+20-level
depthUpdates through ``BinanceBooks.on_message``) and of one-thread replay of the bench's
captured WAL, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_binance  # noqa: E402

from shrivenq._ext.binance_depth import _use_simd  # noqa: E402
from shrivenq.replay.binance import replay_wal  # noqa: E402


def alternate(label: str, unit: str, once, rounds: int) -> None:
    once()
    runs: dict[bool, list[float]] = {True: [], False: []}
    ratios = []
    for r in range(rounds):
        pair = {}
        for simd in ((True, False) if r % 2 else (False, True)):
            if _use_simd(simd) != simd:
                sys.exit("this host has no SSSE3: nothing to compare")
            pair[simd] = once()
            runs[simd].append(pair[simd])
        ratios.append(pair[True] / pair[False])
    _use_simd(True)
    print(f"{label}: SSSE3 {statistics.median(runs[True]):.3g} {unit}, scalar "
          f"{statistics.median(runs[False]):.3g} {unit}, SSSE3/scalar per round "
          f"{statistics.median(ratios):.3f} (median of {rounds})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    rounds = ap.parse_args().rounds
    if rounds < 1:
        ap.error("--rounds must be at least 1")
    info, snap, msgs = bench_binance.depth.__wrapped__()

    def decode_apply() -> float:
        on_message = bench_binance.synced_books(info, snap, msgs[0]).on_message
        start = time.perf_counter()
        for raw in msgs[1:]:
            on_message(raw)
        return (time.perf_counter() - start) / (len(msgs) - 1) * 1e6

    alternate("decode + apply, 20+20 levels", "us/message", decode_apply, rounds)
    path, captured = bench_binance.captured_wal.__wrapped__()

    def replay() -> float:
        start = time.perf_counter()
        replay_wal(path, workers=1)
        return len(captured) / (time.perf_counter() - start) / 1e3

    alternate("replay, one thread", "k messages/s", replay, max(rounds // 4, 4))


if __name__ == "__main__":
    main()
