"""What the zstd level of the Kite ticks WAL costs on disk and in replay's decompression.

    .venv/bin/python benches/kite_wal_levels.py [--levels 1 -1 -2] [--instructions]

Writes the replay bench's 150,000-tick day (as capture writes it), takes its blocks' raw
bodies, and compresses them again at each level. Prints per level the stored bytes a tick
and the median time to decompress every block (7 passes); with ``--instructions`` also
the instructions a tick of decompressing them (callgrind, one pass against three; needs
valgrind). Capture's level is ``shrivenq.capture.kite.WAL_LEVEL``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent

# Decompresses a pickled list of bodies ``argv[2]`` times (run under callgrind).
DECOMPRESS = """
import pickle, sys, zstandard
bodies = pickle.load(open(sys.argv[1], "rb"))
d = zstandard.ZstdDecompressor()
for _ in range(int(sys.argv[2])):
    for b in bodies:
        d.decompress(b)
"""


def raw_bodies(root: Path) -> list[bytes]:
    from shrivenq.wal import format as fmt, segment
    dctx = zstandard.ZstdDecompressor()
    bodies = []
    for path in sorted(root.rglob("*.wal")):
        if "ticks" not in path.parts:
            continue
        seg = segment.open_segment(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            for ref in seg.blocks:
                block = os.pread(fd, ref.frame.size, ref.offset)
                frame = fmt.unpack_frame(block[:fmt.FRAME_SIZE])
                body = block[fmt.FRAME_SIZE:fmt.FRAME_SIZE + frame.stored_len]
                bodies.append(dctx.decompress(body, max_output_size=frame.raw_len))
        finally:
            os.close(fd)
    return bodies


def instructions(bodies: list[bytes], ticks: int, tmp: Path) -> float:
    from replay_instructions import callgrind_counts
    data = tmp / "bodies.pickle"
    data.write_bytes(pickle.dumps(bodies))
    one, three = (callgrind_counts([sys.executable, "-c", DECOMPRESS, str(data), str(passes)],
                                   tmp / f"callgrind.{passes}")["PROGRAM TOTALS"]
                  for passes in (1, 3))
    return (three - one) / 2 / ticks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[1, -1, -2])
    ap.add_argument("--instructions", action="store_true", help="also count (valgrind)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from replay_instructions import write_day
    with tempfile.TemporaryDirectory() as tmp:
        ticks = write_day(Path(tmp) / "day")
        bodies = raw_bodies(Path(tmp) / "day")
        dctx = zstandard.ZstdDecompressor()
        print(f"{len(bodies)} blocks, {ticks} ticks, {sum(map(len, bodies)) / ticks:.1f} raw "
              "bytes a tick")
        for level in args.levels:
            cctx = zstandard.ZstdCompressor(level=level)
            stored = [cctx.compress(b) for b in bodies]
            samples = []
            for _ in range(7):
                start = time.perf_counter()
                for b in stored:
                    dctx.decompress(b)
                samples.append(time.perf_counter() - start)
            line = (f"level {level:>3}: {sum(map(len, stored)) / ticks:.1f} bytes a tick, "
                    f"decompressed in {statistics.median(samples) / ticks * 1e9:.1f} ns a tick")
            if args.instructions:
                line += f", {instructions(stored, ticks, Path(tmp)):.0f} instructions a tick"
            print(line, flush=True)


if __name__ == "__main__":
    main()
