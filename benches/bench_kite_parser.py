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


def record(benchmark, sdk_s: float, target: float) -> float:
    ours = benchmark.stats.stats.median
    ratio = sdk_s / ours
    benchmark.extra_info.update({
        "packets": PACKETS,
        "ns_per_packet": round(ours / PACKETS * 1e9, 2),
        "kiteconnect_ns_per_packet": round(sdk_s / PACKETS * 1e9, 1),
        "speedup_vs_kiteconnect": round(ratio, 1),
        "target": target,
    })
    print(f"\n  {benchmark.name}: {ours / PACKETS * 1e9:.1f} ns/packet, kiteconnect "
          f"{sdk_s / PACKETS * 1e9:.0f} ns/packet, {ratio:.0f}x (target {target}x)")
    return ratio


@pytest.mark.parametrize("mode", ["full", "quote", "ltp"])
def test_parse_frame_vs_kiteconnect(benchmark, frames, mode):
    frame = frames[mode]
    assert len(parse_frame(frame)) == PACKETS
    sdk: list[float] = []
    benchmark.pedantic(parse_frame, args=(frame,), rounds=2000, warmup_rounds=50,
                       setup=interleaved(sdk, lambda: SDK._parse_binary(frame), every=50))
    ratio = record(benchmark, statistics.median(sdk), ARRAY_TARGET[mode])
    assert ratio >= ARRAY_TARGET[mode] / 2, f"parse_frame only {ratio:.0f}x kiteconnect"


@pytest.mark.parametrize("mode", ["full", "quote", "ltp"])
def test_parse_ticks_vs_kiteconnect(benchmark, frames, mode):
    frame = frames[mode]
    assert parse_ticks(frame) == SDK._parse_binary(frame)
    sdk: list[float] = []
    benchmark.pedantic(parse_ticks, args=(frame,), rounds=100, warmup_rounds=5,
                       setup=interleaved(sdk, lambda: SDK._parse_binary(frame), every=2))
    ratio = record(benchmark, statistics.median(sdk), DICTS_TARGET)
    assert ratio >= DICTS_TARGET / 2, f"parse_ticks only {ratio:.1f}x kiteconnect"
