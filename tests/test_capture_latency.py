"""The optional receipt-to-WAL-append latency recorder of Kite capture, and its Prometheus
histogram: off by default, one sample per message when on, a ring that keeps the newest."""

from __future__ import annotations

import asyncio

import numpy as np
from prometheus_client import generate_latest

from shrivenq.capture.kite import KiteCapture, KiteCaptureSettings, LatencyRecorder
from shrivenq.capture.metrics import MetricsServer
from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, KiteSimServer

NIFTY, BANKNIFTY = 256265, 260105


def test_ring_keeps_the_newest_samples_and_the_histogram_counts_each_once():
    lat = LatencyRecorder(4)
    for ns in (1_000, 7_000, 60_000):
        lat.add(ns)
    assert lat.values().tolist() == [1_000, 7_000, 60_000]
    buckets, total, count = lat.histogram()
    assert count == 3 and total == 68_000 / 1e9
    cum = dict(buckets)
    assert cum[5e-6] == 1 and cum[1e-5] == 2 and cum[5e-5] == 2 and cum[1e-4] == 3
    assert buckets[-1] == (float("inf"), 3)
    for ns in (2, 3, 4, 30_000_000):   # wraps: the ring holds the newest four
        lat.add(ns)
    assert lat.values().tolist() == [2, 3, 4, 30_000_000]
    buckets, total, count = lat.histogram()   # folds the four new ones only
    assert count == 7 and buckets[-1] == (float("inf"), 7) and dict(buckets)[2e-2] == 6
    assert lat.histogram()[2] == 7            # nothing new: nothing added


def test_ring_overwritten_before_a_fold_is_missing_not_miscounted():
    lat = LatencyRecorder(2)
    for ns in (1, 2, 3, 4, 5):
        lat.add(ns)
    buckets, total, count = lat.histogram()
    assert count == 2 and total == 9 / 1e9 and buckets[0] == (5e-6, 2)


def test_capture_records_one_sample_per_message_and_exposes_a_histogram(tmp_path):
    async def main():
        async with KiteSimServer(rate=100, frame_interval=0.01) as sim:
            settings = KiteCaptureSettings(
                token_modes={NIFTY: "full", BANKNIFTY: "quote"}, data_dir=tmp_path,
                api_key=DEMO_API_KEY, access_token=DEMO_ACCESS_TOKEN, ws_root=sim.ws_url,
                duration=1.0, latency_samples=10_000)
            capture = KiteCapture(settings)
            metrics = MetricsServer(capture)
            task = asyncio.create_task(capture.run())
            while capture.recorder is None or capture.recorder.counters.messages < 20:
                await asyncio.sleep(0.01)
            text = generate_latest(metrics.registry).decode()
            summary = await task
            return capture, summary, text

    capture, summary, text = asyncio.run(main())
    lat = capture.recorder.latency
    assert lat.count == summary.counters.messages > 20
    values = lat.values()
    assert (values > 0).all() and (values < 1_000_000_000).all()
    assert "shrivenq_receive_to_wal_seconds_bucket{le=\"5e-05\"}" in text
    assert "shrivenq_receive_to_wal_seconds_count" in text


def test_latency_is_off_by_default(tmp_path):
    async def main():
        async with KiteSimServer(rate=100, frame_interval=0.01) as sim:
            settings = KiteCaptureSettings(
                token_modes={NIFTY: "full"}, data_dir=tmp_path, api_key=DEMO_API_KEY,
                access_token=DEMO_ACCESS_TOKEN, ws_root=sim.ws_url, duration=0.3)
            capture = KiteCapture(settings)
            await capture.run()
            return capture, generate_latest(MetricsServer(capture).registry).decode()

    capture, text = asyncio.run(main())
    assert capture.recorder.latency is None
    assert "receive_to_wal" not in text
    assert np.dtype(np.int64) == LatencyRecorder(1).samples.dtype
