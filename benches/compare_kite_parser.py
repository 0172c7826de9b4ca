"""shrivenq's Kite parser against kiteconnect's, on the same 500-packet frames, in one
process: the list-of-dicts parsers as runs of frames each read by an on_ticks (throughput,
the cyclic GC's collections included, as bench_kite_parser times them), parse_frame as the
median of single calls."""

from __future__ import annotations

from kiteconnect import KiteTicker
from bench_kite_parser import on_ticks
from timing import median_seconds

from shrivenq.kite import KIND_FULL, KIND_LTP, KIND_QUOTE, parse_frame, parse_ticks
from shrivenq.kite.wire import encode_frame
from shrivenq.sim.market import KiteMarket, default_universe


def run_of(parse, frame: bytes, count: int) -> None:
    for _ in range(count):
        on_ticks(parse(frame))


def main() -> None:
    sdk = KiteTicker.__new__(KiteTicker)  # _parse_binary needs no connection state
    market = KiteMarket(default_universe(200), seed=1)
    print("Kite frame parsing, 500 packets per frame, per packet\n")
    print(f"{'mode':<6}{'kiteconnect':>14}{'parse_ticks':>14}{'parse_frame':>14}"
          f"{'dicts x':>10}{'array x':>10}")
    for name, kind in (("full", KIND_FULL), ("quote", KIND_QUOTE), ("ltp", KIND_LTP)):
        frame = encode_frame(market.ticks(500, kind))
        assert parse_ticks(frame) == sdk._parse_binary(frame)
        sdk_s = median_seconds(run_of, 5, sdk._parse_binary, frame, 10) / 10
        dicts_s = median_seconds(run_of, 5, parse_ticks, frame, 40) / 40
        array_s = median_seconds(parse_frame, 2000, frame)
        print(f"{name:<6}{sdk_s / 500 * 1e9:>11.0f} ns{dicts_s / 500 * 1e9:>11.0f} ns"
              f"{array_s / 500 * 1e9:>11.1f} ns{sdk_s / dicts_s:>9.0f}x{sdk_s / array_s:>9.0f}x")
    print("\nparse_ticks returns exactly kiteconnect's dicts (checked above for each frame).")


if __name__ == "__main__":
    main()
