"""Two builds of shrivenq, alternating, on the same machine: the fair way to tell a change on
this shared VM, whose speed moves by up to 2x between (and within) minutes.

    git worktree add /tmp/before REV
    (cd /tmp/before && "$OLDPWD/.venv/bin/python" setup.py build_ext --inplace)
    .venv/bin/python benches/compare_builds.py /tmp/before [--rounds 3]

Writes a Kite WAL (the replay bench's 150,000-tick day) and a Binance WAL (the Binance
bench's 100,000 depth messages) once, with this tree, then runs each build in its own
process, alternately, ``rounds`` times: Kite replay (one thread and the default read-ahead),
Binance replay (the same), Binance decode + apply of 20+20-level depthUpdates (the Binance
bench's messages), and parse_ticks against kiteconnect in alternating runs of frames (full
and quote), parse_frame per packet. Prints every run and the median per build.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import median_seconds

HERE = Path(__file__).resolve().parent
MAIN = HERE.parent


def median_s(fn, n: int) -> float:
    """``timing.median_seconds`` after one untimed call (imports, first-touch caches)."""
    fn()
    return median_seconds(fn, n)


def measure(wal_dir: Path) -> dict[str, float]:
    """Run inside one build's process (PYTHONPATH set to that tree)."""
    from kiteconnect import KiteTicker

    from shrivenq.replay.binance import replay_wal
    from shrivenq.kite import KIND_FULL, KIND_QUOTE, parse_frame, parse_ticks
    from shrivenq.kite.wire import encode_frame
    from shrivenq.replay.kite import KiteReplay
    from shrivenq.sim.market import KiteMarket, default_universe

    kite, binance = wal_dir / "kite", wal_dir / "binance"
    ticks = int((wal_dir / "kite_ticks").read_text())
    out = {}
    for label, workers in (("1 thread", 1), ("read-ahead", None)):
        s = median_s(lambda: sum(len(b.rows) for b in
                                 KiteReplay(kite, workers=workers).ticks()), 9)
        out[f"Kite replay, {label} (M ticks/s)"] = ticks / s / 1e6
        s = median_s(lambda: replay_wal(binance / "binance", workers=workers), 7)
        out[f"Binance replay, {label} (k messages/s)"] = 100 / s
    sys.path.insert(0, str(HERE))
    import bench_binance
    from bench_kite_parser import on_ticks
    info, snap, msgs = bench_binance.depth.__wrapped__()
    samples = []
    for _ in range(9):
        books = bench_binance.synced_books(info, snap, msgs[0])
        on_message = books.on_message
        start = time.perf_counter()
        for raw in msgs[1:]:
            on_message(raw)
        samples.append((time.perf_counter() - start) / (len(msgs) - 1))
    out["Binance decode + apply (us/message)"] = statistics.median(samples[1:]) * 1e6
    sdk = KiteTicker.__new__(KiteTicker)
    market = KiteMarket(default_universe(200), seed=11)
    for name, kind in (("full", KIND_FULL), ("quote", KIND_QUOTE)):
        frames = [encode_frame(market.ticks(500, kind)) for _ in range(8)]
        theirs = ours = 0.0
        # Throughput, as bench_kite_parser times it: runs of frames, each list read by an
        # on_ticks and dropped, the two parsers alternating run by run.
        for _ in range(4):
            start = time.perf_counter()
            for i in range(8):
                on_ticks(sdk._parse_binary(frames[i]))
            theirs += (time.perf_counter() - start) / 8
            start = time.perf_counter()
            for i in range(24):
                on_ticks(parse_ticks(frames[i % 8]))
            ours += (time.perf_counter() - start) / 24
        out[f"parse_ticks {name} (x kiteconnect)"] = theirs / ours
        per_call = median_s(lambda: parse_frame(frames[0]), 300)
        out[f"parse_frame {name} (ns/packet)"] = per_call / 500 * 1e9
    return out


def write_wals(wal_dir: Path) -> None:
    sys.path.insert(0, str(HERE))
    import bench_binance
    import bench_replay
    from shrivenq.sim.stream import kite_stream

    stream = kite_stream()
    ticks = bench_replay._write_session(wal_dir / "kite", stream, minutes=10,
                                        per_minute=stream.frames // 10,
                                        start_ns=bench_replay.START)
    (wal_dir / "kite_ticks").write_text(str(ticks))
    path, _ = bench_binance.captured_wal.__wrapped__()
    shutil.copytree(path.parent, wal_dir / "binance")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", type=Path, nargs="?", help="the other tree, extensions built")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    if args.other is None or not (args.other / "shrivenq").is_dir():
        ap.error("give the other tree: a checkout with shrivenq/ and its extensions built")
    trees = {"other": args.other.resolve(), "this": MAIN}
    wal_dir = Path(tempfile.mkdtemp(prefix="shrivenq-compare-"))
    try:
        write_wals(wal_dir)
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for r in range(args.rounds):
            for name, tree in trees.items():
                env = dict(os.environ, PYTHONPATH=str(tree))
                done = subprocess.run([sys.executable, __file__, "--measure", str(wal_dir)],
                                      env=env, cwd=tempfile.gettempdir(), check=True,
                                      capture_output=True, text=True)
                runs[name].append(json.loads(done.stdout))
                print(f"round {r + 1}, {name} ({tree}): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in runs[name][-1].items()),
                      flush=True)
        print("\nmedians over the rounds")
        for key in runs["this"][0]:
            print(f"  {key:<42} other {statistics.median(x[key] for x in runs['other']):8.2f}"
                  f"   this {statistics.median(x[key] for x in runs['this']):8.2f}")
    finally:
        shutil.rmtree(wal_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
