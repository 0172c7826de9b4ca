"""Instructions per tick of Kite replay, by function, under callgrind: a count that does not
move with this shared machine's speed, for telling whether a change to the replay path is
real.

    .venv/bin/python benches/replay_instructions.py [--top 12] [--uncompacted]

Writes the replay bench's 150,000-tick day as capture leaves it (bench_replay._write_session:
a block a second, compacted unless --uncompacted) to a temporary
directory, then runs one process that replays it once and one that replays it three times,
both under ``valgrind --tool=callgrind``; the difference, halved, is one replay with the
imports and first-call costs cancelled. Prints the total and the top functions (exclusive
instructions per tick). Needs valgrind; takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

REPLAY = """
import sys
from pathlib import Path
from shrivenq.replay.kite import KiteReplay
root = Path(sys.argv[1])
for _ in range(int(sys.argv[2])):
    ticks = sum(len(b.rows) for b in KiteReplay(root, workers=1).ticks())
print(ticks)
"""

LINE = re.compile(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$")


def write_day(root: Path, compact: bool = True) -> int:
    """The replay bench's day as capture leaves it: a block a second, each ticks segment
    compacted when closed (``compact``) or not (capture --no-compact, or still running)."""
    sys.path.insert(0, str(HERE))
    from bench_replay import START, _write_session
    from shrivenq.sim.stream import kite_stream
    stream = kite_stream()
    return _write_session(root, stream, minutes=10, per_minute=stream.frames // 10,
                          start_ns=START, compact=compact)


def profile(root: Path, replays: int, out: Path) -> dict[str, int]:
    return callgrind_counts([sys.executable, "-c", REPLAY, str(root), str(replays)], out)


def callgrind_counts(command: list[str], out: Path) -> dict[str, int]:
    """Instructions by function (and "PROGRAM TOTALS") of ``command`` under callgrind."""
    # One BLAS thread: numpy's idle BLAS workers spin and add noise to the count.
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = subprocess.run(["callgrind_annotate", "--auto=no", str(out)], check=True,
                          capture_output=True, text=True).stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        m = None if "=>" in line else LINE.match(line)
        if m:
            name = re.sub(r"\s*\[.*\]$", "", m.group(2).strip())
            name = re.sub(r"^/tmp/python-build[^:]*/", "", name)
            counts[name] = counts.get(name, 0) + int(m.group(1).replace(",", ""))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--uncompacted", action="store_true",
                        help="replay the day as written, before compaction")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        sys.exit("needs valgrind (apt install valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="replay-instr-"))
    try:
        ticks = write_day(tmp / "day", compact=not args.uncompacted)
        one = profile(tmp / "day", 1, tmp / "cg.1")
        three = profile(tmp / "day", 3, tmp / "cg.3")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_tick = {k: (v - one.get(k, 0)) / 2 / ticks for k, v in three.items()}
    total = per_tick.pop("PROGRAM TOTALS")
    shape = "one-second blocks as written" if args.uncompacted else "compacted"
    print(f"Kite replay, one thread, {ticks} full-mode ticks ({shape}): {total:.0f} "
          "instructions a tick")
    for name, n in sorted(per_tick.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{n:8.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
