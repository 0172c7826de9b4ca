"""Kite frame parsing: shrivenq against kiteconnect's own parser, on the same frames, in the
same run. pytest-benchmark times shrivenq; kiteconnect is timed between shrivenq's rounds (in
the benchmark's untimed setup), so both sides see the same state of a shared, noisy machine.
The gate is the ratio of medians, failing only below half the issue's target.

    make bench   # or: .venv/bin/python -m pytest benches/bench_kite_parser.py --benchmark-only
"""

from __future__ import annotations

import statistics

import pytest
from kiteconnect import KiteTicker
from timing import interleaved

from shrivenq.kite import KIND_FULL, KIND_LTP, KIND_QUOTE, parse_frame, parse_ticks
from shrivenq.kite.wire import encode_frame
from shrivenq.sim.market import KiteMarket, default_universe

PACKETS = 500
SDK = KiteTicker.__new__(KiteTicker)

# Issue #2's targets: parse_frame 300x kiteconnect on full frames, parse_ticks 10x.
# Quote and ltp packets are cheap for the SDK too, so their array target is lower.
ARRAY_TARGET = {"full": 300, "quote": 100, "ltp": 30}
DICTS_TARGET = 10


@pytest.fixture(scope="module")
def frames() -> dict[str, bytes]:
    market = KiteMarket(default_universe(200), seed=11)
    return {name: encode_frame(market.ticks(PACKETS, kind))
            for name, kind in (("full", KIND_FULL), ("quote", KIND_QUOTE), ("ltp", KIND_LTP))}


def record(benchmark, ours_s: float, sdk_s: float, target: float, **extra) -> float:
    """Record and print the ratio of one frame's medians, kiteconnect's over ours."""
    ratio = sdk_s / ours_s
    benchmark.extra_info.update({
        "packets": PACKETS,
        "ns_per_packet": round(ours_s / PACKETS * 1e9, 2),
        "kiteconnect_ns_per_packet": round(sdk_s / PACKETS * 1e9, 1),
        "speedup_vs_kiteconnect": round(ratio, 1),
        "target": target,
        **extra,
    })
    print(f"\n  {benchmark.name}: {ours_s / PACKETS * 1e9:.1f} ns/packet, kiteconnect "
          f"{sdk_s / PACKETS * 1e9:.0f} ns/packet, {ratio:.1f}x (target {target}x)")
    return ratio


@pytest.mark.parametrize("mode", ["full", "quote", "ltp"])
def test_parse_frame_vs_kiteconnect(benchmark, frames, mode):
    frame = frames[mode]
    assert len(parse_frame(frame)) == PACKETS
    sdk: list[float] = []
    benchmark.pedantic(parse_frame, args=(frame,), rounds=2000, warmup_rounds=50,
                       setup=interleaved(sdk, lambda: SDK._parse_binary(frame), every=50))
    ratio = record(benchmark, benchmark.stats.stats.median, statistics.median(sdk),
                   ARRAY_TARGET[mode])
    assert ratio >= ARRAY_TARGET[mode] / 2, f"parse_frame only {ratio:.0f}x kiteconnect"


# parse_ticks is timed as KiteTicker uses its parser, for throughput: a stream of frames,
# each list handed to an on_ticks that reads every tick's last price, then dropped. Reading
# matters: its first allocation runs the young collection that parse_ticks put off, over
# ticks still alive (a consumer that drops the list untouched never pays it, and shows
# shrivenq at its best: docs/PERFORMANCE.md). A round runs enough frames to hold the cyclic
# GC's rare full collections (about one per 20 full frames, over the whole heap), which a
# median of single calls leaves out; the two parsers alternate round by round, so both share
# the machine's state.
FEED_FRAMES = 8
OURS_RUN, SDK_RUN = 40, 20   # frames a round: ours about a third as long as kiteconnect's


def on_ticks(ticks: list[dict]) -> float:
    total = 0.0
    for tick in ticks:
        total += tick["last_price"]
    return total


@pytest.fixture(scope="module")
def feeds() -> dict[str, list[bytes]]:
    market = KiteMarket(default_universe(200), seed=12)
    return {name: [encode_frame(market.ticks(PACKETS, kind)) for _ in range(FEED_FRAMES)]
            for name, kind in (("full", KIND_FULL), ("quote", KIND_QUOTE), ("ltp", KIND_LTP))}


def run_of(parse, frames: list[bytes], count: int):
    def run() -> None:
        for i in range(count):
            on_ticks(parse(frames[i % len(frames)]))
    return run


@pytest.mark.parametrize("mode", ["full", "quote", "ltp"])
def test_parse_ticks_vs_kiteconnect(benchmark, feeds, mode):
    frames = feeds[mode]
    for frame in frames:
        assert parse_ticks(frame) == SDK._parse_binary(frame)
    sdk: list[float] = []
    benchmark.pedantic(run_of(parse_ticks, frames, OURS_RUN), rounds=7, warmup_rounds=1,
                       setup=interleaved(sdk, run_of(SDK._parse_binary, frames, SDK_RUN)))
    ratio = record(benchmark, benchmark.stats.stats.median / OURS_RUN,
                   statistics.median(sdk[1:]) / SDK_RUN,    # [0]: before our warm-up
                   DICTS_TARGET, frames_per_round=OURS_RUN)
    assert ratio >= DICTS_TARGET / 2, f"parse_ticks only {ratio:.1f}x kiteconnect"
