"""One Kite capture in a process of its own, timed per message (``benches/bench_capture.py``'s
latency measurement; not a benchmark itself).

    python benches/kite_capture_probe.py WS_ROOT DATA_DIR INSTRUMENTS WARMUP WINDOW OUT.json \
        [SEGMENT_BYTES]

Captures every instrument of ``sim_master(INSTRUMENTS)`` in full mode from the Kite ticker at
WS_ROOT (the simulator, in another process) with ``KiteCapture`` as users run it (default
WAL settings, books kept, snapshots every 60 s) plus ``latency_samples``, for WARMUP +
WINDOW seconds. Writes OUT.json: the receipt-to-WAL-append latencies (ns) of the messages
received in the window, VmRSS samples (kB) taken every 0.5 s in the window, and counters.
SEGMENT_BYTES (default capture's 100 MB): small, segments close, and are compacted, within
the window.
The process holds nothing but the capture (no pytest, no simulator), so its RSS is the
capture's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from pathlib import Path


def vm_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(ws_root: str, data_dir: str, instruments: int, warmup: float, window: float,
         out: str, segment_bytes: int = 100_000_000) -> None:
    rss_start = vm_kb()
    from shrivenq.capture.kite import KiteCapture, KiteCaptureSettings
    from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, sim_master

    tokens = sim_master(instruments).tokens
    settings = KiteCaptureSettings(
        token_modes={int(t): "full" for t in tokens}, data_dir=Path(data_dir),
        api_key=DEMO_API_KEY, access_token=DEMO_ACCESS_TOKEN, ws_root=ws_root,
        duration=warmup + window, latency_samples=1 << 21, segment_bytes=segment_bytes)
    capture = KiteCapture(settings)
    rss_imported = vm_kb()
    result: dict = {}

    async def observe() -> None:
        while capture.recorder is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(warmup)
        rec = capture.recorder
        c0, t0, ticks0 = rec.latency.count, time.monotonic(), rec.counters.ticks
        gc0 = [s["collections"] for s in gc.get_stats()]
        rss = []
        end = t0 + window - 0.25
        while time.monotonic() < end:
            rss.append(vm_kb())
            await asyncio.sleep(0.5)
        c1, t1, ticks1 = rec.latency.count, time.monotonic(), rec.counters.ticks
        result.update(
            window_s=t1 - t0, first=c0, last=c1, ticks=ticks1 - ticks0, rss_kb=rss,
            gc_collections=[b - a for a, b in zip(gc0, (s["collections"]
                                                        for s in gc.get_stats()))])

    async def run():
        task = asyncio.create_task(observe())
        summary = await capture.run()
        await task
        return summary

    summary = asyncio.run(run())
    lat = capture.recorder.latency
    assert lat.count <= lat.capacity, "latency ring wrapped; raise latency_samples"
    samples = lat.samples[result["first"]:result["last"]]
    c = summary.counters
    result.update(
        latency_ns=samples.tolist(), rss_start_kb=rss_start, rss_imported_kb=rss_imported,
        rss_peak_kb=vm_kb("VmHWM"), messages=c.messages, all_ticks=c.ticks,
        heartbeats=c.heartbeats, gaps=c.gaps, malformed=c.malformed_frames,
        disconnects=c.disconnects, connections=summary.connections,
        queue_full_waits=capture.ticks.stats.queue_full_waits, records=summary.records,
        segments_compacted=capture.ticks.stats.segments_compacted)
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], int(a[2]), float(a[3]), float(a[4]), a[5], *map(int, a[6:7]))
