"""The write-ahead log: every message captured, losslessly, in checksummed zstd blocks.

Layout: ROOT/VENUE/YYYY-MM-DD/STREAM/NNNNNN.wal (docs/WAL_FORMAT.md has the byte format).

    WalWriter(root, venue, stream, tz)   append / append_batch / flush / close
    WalReader(path, ...)                 batches of numpy columns, filtered by time/instrument
    verify(path, repair=False)           every checksum, every record; torn-tail repair
    inspect(path)                        per-segment summaries from footers

Importing this package keeps malloc from returning block-sized buffers to the kernel between
blocks (``shrivenq.heap``; ``SHRIVENQ_MALLOC=system`` opts out).
"""

from shrivenq.heap import retain_freed_memory
from shrivenq.wal.format import (
    CODEC_PLAIN, CODEC_TICK_DELTA, FORMAT_VERSION, default_codec, tick_delta_available)
from shrivenq.wal.layout import IST, UTC
from shrivenq.wal.reader import RECORD_DTYPE, Record, RecordBatch, WalReader, concat, read_wal
from shrivenq.wal.records import Kind
from shrivenq.wal.segment import RepairReport, open_segment, repair_segment
from shrivenq.wal.tools import SegmentSummary, VerifyReport, inspect, verify
from shrivenq.wal.writer import FsyncPolicy, WalWriter, WriterStats, close_on_signals

retain_freed_memory()

__all__ = [
    "CODEC_PLAIN", "CODEC_TICK_DELTA", "FORMAT_VERSION", "IST", "RECORD_DTYPE", "UTC",
    "FsyncPolicy", "Kind", "Record", "RecordBatch", "RepairReport", "SegmentSummary",
    "VerifyReport", "WalReader", "WalWriter", "WriterStats", "close_on_signals", "concat",
    "default_codec", "inspect", "open_segment", "read_wal", "repair_segment",
    "tick_delta_available", "verify",
]
