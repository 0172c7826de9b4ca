"""Prometheus ``/metrics`` and a JSON ``/health`` for a running capture, on one small asyncio
HTTP server. Values are read from the capture at scrape time, so the hot path does no
bookkeeping for them."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

log = logging.getLogger("shrivenq.capture.metrics")


class _CaptureCollector:
    def __init__(self, capture):
        self.capture = capture

    def collect(self):
        cap = self.capture
        c = cap.recorder.counters if cap.recorder else None
        if c is None:
            return
        for name, value, doc in (
            ("shrivenq_ticks", c.ticks, "Packets parsed from the feed"),
            ("shrivenq_messages", c.messages, "WebSocket messages received"),
            ("shrivenq_received_bytes", c.bytes, "WebSocket payload bytes received"),
            ("shrivenq_heartbeats", c.heartbeats, "1-byte heartbeats received"),
            ("shrivenq_malformed_frames", c.malformed_frames, "Malformed frames (stored raw)"),
            ("shrivenq_exchange_errors", c.exchange_errors, "Error messages from the exchange"),
            ("shrivenq_gaps", c.gaps, "Spans in which the feed was not received"),
            ("shrivenq_disconnects", c.disconnects, "Connections lost"),
            ("shrivenq_snapshots", c.snapshots, "Book snapshots written"),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        health = health_of(cap)
        yield GaugeMetricFamily("shrivenq_connections_up", "Connections currently open",
                                value=health["connections_up"])
        yield GaugeMetricFamily("shrivenq_wal_queue_records",
                                "Records appended but not yet written to disk",
                                value=health["queue_depth"])
        yield GaugeMetricFamily("shrivenq_last_tick_timestamp_seconds",
                                "Wall-clock time of the last tick received",
                                value=c.last_tick_wall_ns / 1e9)
        latency = cap.recorder.latency
        if latency is not None:   # folded here, at scrape time, not per message
            buckets, total, _ = latency.histogram()
            yield HistogramMetricFamily(
                "shrivenq_receive_to_wal_seconds",
                "Per message, from receipt off the WebSocket to its WAL append returning",
                buckets=[(floatToGoString(b), n) for b, n in buckets],
                sum_value=total)
        if cap.ticks is not None:
            st = cap.ticks.stats
            yield CounterMetricFamily("shrivenq_wal_bytes", "Bytes written to the ticks WAL",
                                      value=st.bytes_written)
            yield CounterMetricFamily("shrivenq_wal_queue_full_waits",
                                      "Times the capture waited on a full WAL queue",
                                      value=st.queue_full_waits)
            yield CounterMetricFamily("shrivenq_wal_fast_blocks",
                                      "Blocks compressed at zstd level 1 because the WAL "
                                      "writer was behind",
                                      value=st.fast_blocks)
            yield CounterMetricFamily("shrivenq_wal_compacted_segments",
                                      "Ticks WAL segments compacted after they were closed",
                                      value=st.segments_compacted)
            yield CounterMetricFamily("shrivenq_wal_compaction_saved_bytes",
                                      "Bytes compaction took off the ticks WAL",
                                      value=st.compaction_saved_bytes)
            compactor = cap.ticks.compactor
            yield CounterMetricFamily("shrivenq_wal_compaction_failures",
                                      "Compactions that failed (each segment stays as written)",
                                      value=len(compactor.errors) if compactor else 0)


def health_of(capture) -> dict:
    feed, rec = capture.feed, capture.recorder
    stats = feed.stats if feed else []
    up = sum(1 for s in stats if s.connected)
    queue = (capture.ticks.appended_records - capture.ticks.written_records
             if capture.ticks is not None else 0)
    last = rec.counters.last_tick_wall_ns if rec else 0
    return {
        "status": "ok" if stats and up == len(stats) else "degraded",
        "connected": bool(stats) and up == len(stats),
        "connections_up": up,
        "connections": len(stats),
        "ticks": rec.counters.ticks if rec else 0,
        "last_tick_time": last / 1e9 if last else None,
        "seconds_since_last_tick": round(time.time() - last / 1e9, 3) if last else None,
        "gaps": rec.counters.gaps if rec else 0,
        "queue_depth": queue,
    }


class MetricsServer:
    """``GET /metrics`` (Prometheus text) and ``GET /health`` (JSON; 503 when degraded)."""

    def __init__(self, capture, host: str = "127.0.0.1", port: int = 0):
        self.capture = capture
        self.host, self.port = host, port
        self.registry = CollectorRegistry()
        self.registry.register(_CaptureCollector(capture))
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> "MetricsServer":
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics and /health", self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = generate_latest(self.registry)
            elif path == "/health":
                health = health_of(self.capture)
                status = "200 OK" if health["connected"] else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(health).encode() + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /health\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: "
                         f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
