"""Kite replay of two builds, paired: one persistent process per build, one replay each per
request, the requests alternated, and the ratio taken per adjacent pair. On this shared
machine, whose speed moves by up to 2x within minutes, two replays 30 ms apart see the same
machine; runs of whole processes (compare_builds.py) do not.

    git worktree add /tmp/before REV
    (cd /tmp/before && "$OLDPWD/.venv/bin/python" setup.py build_ext --inplace)
    .venv/bin/python benches/ab_kite_replay.py /tmp/before [--pairs 60] [--same-wal]

Each build writes its own copy of the replay bench's 150,000-tick day (its own
``replay_instructions.write_day``, so at the zstd level its capture writes) and replays it on
one thread (``workers=1``). ``--same-wal``: both replay the day this tree writes (the code's
difference alone). Prints each build's median and quartiles in ticks/s and the median and
quartiles of the per-pair ratio (this tree over the other).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIN = HERE.parent

WRITE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from replay_instructions import write_day
print(write_day(Path(sys.argv[1])))
"""

# Reads a line per replay wanted, answers with the replay's ticks/s.
WORKER = """
import sys, time
from pathlib import Path
from shrivenq.replay.kite import KiteReplay
root = Path(sys.argv[1])
def replay():
    return sum(len(b.rows) for b in KiteReplay(root, workers=1).ticks())
replay(); replay()
for _ in sys.stdin:
    start = time.perf_counter()
    n = replay()
    print(n / (time.perf_counter() - start), flush=True)
"""


def env_for(tree: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1")


def write_day(tree: Path, root: Path) -> int:
    out = subprocess.run([sys.executable, "-c", WRITE, str(root), str(tree / "benches")],
                         env=env_for(tree), cwd=tempfile.gettempdir(), check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])


def summary(values: list[float]) -> str:
    q = statistics.quantiles(values)
    return f"median {statistics.median(values):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", type=Path, help="the other tree, extensions built")
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--same-wal", action="store_true",
                    help="both builds replay the day this tree writes")
    args = ap.parse_args()
    if not (args.other / "shrivenq").is_dir() or args.pairs < 2:
        ap.error("give the other tree (a checkout with its extensions built) and 2+ pairs")
    trees = [args.other.resolve(), MAIN]
    with tempfile.TemporaryDirectory() as tmp:
        days = [Path(tmp) / "other", Path(tmp) / "this"]
        ticks = write_day(MAIN, days[1])
        if args.same_wal:
            days[0] = days[1]
        elif write_day(trees[0], days[0]) != ticks:
            sys.exit("the two builds wrote days of different tick counts")
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(day)], env=env_for(tree),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd=tempfile.gettempdir())
                 for tree, day in zip(trees, days)]

        def once(i: int) -> float:
            procs[i].stdin.write("\n")
            procs[i].stdin.flush()
            return float(procs[i].stdout.readline())

        rates: list[list[float]] = [[], []]
        for pair in range(args.pairs):
            for i in ((0, 1) if pair % 2 == 0 else (1, 0)):
                rates[i].append(once(i))
        for p in procs:
            p.stdin.close()
            p.wait()
    for tree, day, r in zip(trees, ("its own", "this tree's") if not args.same_wal
                            else ("this tree's", "this tree's"), rates):
        print(f"{tree} ({day} day): M ticks/s {summary([x / 1e6 for x in r])}")
    ratios = [b / a for a, b in zip(*rates)]
    print(f"this tree / other, per pair: {summary(ratios)}")


if __name__ == "__main__":
    main()
