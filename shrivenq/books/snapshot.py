"""Book snapshots as stored in the WAL's snapshots stream (record kind BOOK_SNAPSHOT).

A snapshot payload is a msgpack map, versioned:

    v         1
    venue     "kite"
    format    "kite-tick-v1": ``rows`` is TICK_DTYPE rows, little-endian, sorted by token
    session   the capture session id (the SESSION_START record of the ticks stream)
    snapshot  its number within the session (0, 1, ...); a SNAPSHOT_MARK record with the
              same session and number sits in the ticks stream exactly where it was taken
    wall_ns   when the snapshot was taken (the mark's wall_ns)
    hash      state_hash(rows): xxh3-64 of ``rows``
    rows      bytes

Replay starts from a snapshot by loading ``rows`` and applying the ticks stream's records
after its mark; ``replay --verify`` compares the replayed books' hash at every mark.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

from shrivenq._ext.kite_frame import TICK_DTYPE
from shrivenq.books import state_hash
from shrivenq.errors import WalFormatError

SNAPSHOT_VERSION = 1
KITE_FORMAT = "kite-tick-v1"


@dataclass(frozen=True)
class SnapshotInfo:
    session: str
    snapshot: int
    wall_ns: int
    hash: int


@dataclass(frozen=True)
class KiteSnapshot:
    session: str
    snapshot: int
    wall_ns: int
    hash: int
    rows: np.ndarray


def encode_kite_snapshot(rows: np.ndarray, session: str, snapshot: int, wall_ns: int) -> bytes:
    ordered = np.ascontiguousarray(rows[np.argsort(rows["token"], kind="stable")])
    return msgpack.packb({
        "v": SNAPSHOT_VERSION, "venue": "kite", "format": KITE_FORMAT, "session": session,
        "snapshot": int(snapshot), "wall_ns": int(wall_ns), "hash": state_hash(ordered),
        "rows": ordered.tobytes(),
    }, use_bin_type=True)


def peek_kite_snapshot(payload: bytes) -> SnapshotInfo:
    """Session, number, time and stored hash of a snapshot, without checking its rows."""
    doc = _unpack(payload)
    try:
        return SnapshotInfo(str(doc["session"]), int(doc["snapshot"]), int(doc["wall_ns"]),
                            int(doc["hash"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WalFormatError(f"book snapshot is missing or has a bad field: {exc}") from None


def _unpack(payload: bytes) -> dict:
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WalFormatError(f"book snapshot is not msgpack: {exc}") from None
    if not isinstance(doc, dict):
        raise WalFormatError("book snapshot is not a msgpack map")
    version = doc.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise WalFormatError(f"book snapshot has no valid version (v = {version!r})")
    if version > SNAPSHOT_VERSION:
        raise WalFormatError(f"book snapshot version {version!r} is newer than this reader "
                             f"(knows up to {SNAPSHOT_VERSION}); upgrade shrivenq")
    if doc.get("format") != KITE_FORMAT:
        raise WalFormatError(f"book snapshot format {doc.get('format')!r} is not {KITE_FORMAT}")
    return doc


def decode_kite_snapshot(payload: bytes) -> KiteSnapshot:
    """Parse and check a snapshot payload; anything off raises WalFormatError saying what."""
    doc = _unpack(payload)
    raw = doc.get("rows")
    if not isinstance(raw, bytes) or len(raw) % TICK_DTYPE.itemsize:
        raise WalFormatError("book snapshot rows are not a whole number of TICK_DTYPE rows")
    rows = np.frombuffer(raw, dtype=TICK_DTYPE).copy()
    if state_hash(rows) != doc.get("hash"):
        raise WalFormatError("book snapshot rows do not match their stored hash")
    try:
        return KiteSnapshot(str(doc["session"]), int(doc["snapshot"]), int(doc["wall_ns"]),
                            int(doc["hash"]), rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise WalFormatError(f"book snapshot is missing or has a bad field: {exc}") from None
