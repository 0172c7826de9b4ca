"""What a WAL record is: its kind, its format version, and the control records' payloads.

A record is ``kind`` (u8) + ``version`` (u8, the format version of that kind's payload) +
``conn`` (u32 connection id) + ``wall_ns`` (i64, receive time on the wall clock) +
``mono_ns`` (i64, receive time on the monotonic clock) + ``payload`` (bytes) + optionally the
instrument keys the caller found in it (u64 each; for Kite, the packets' tokens).

Exchange messages (``BINARY``, ``TEXT``, ``REST``) carry the bytes exactly as received.
Control records carry a msgpack map whose fields are listed in ``CONTROL_FIELDS`` and in
docs/WAL_FORMAT.md. A reader refuses a control record whose version is newer than it knows.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import msgpack

from shrivenq.errors import WalFormatError


class Kind(IntEnum):
    """Record kinds. Values are on disk: never renumber, only add."""

    BINARY = 1          # a binary WebSocket message, bytes as received
    TEXT = 2            # a text WebSocket message, UTF-8 bytes as received
    REST = 3            # a REST response body, bytes as received
    CONNECT = 16        # control: a connection opened
    DISCONNECT = 17     # control: a connection closed
    SUBSCRIBE = 18      # control: instruments subscribed
    UNSUBSCRIBE = 19    # control: instruments unsubscribed
    MODE = 20           # control: instruments' streaming mode changed
    GAP = 21            # control: a span of time in which messages may have been missed
    SESSION_START = 22  # control: a capture session began
    SESSION_STOP = 23   # control: a capture session ended
    SNAPSHOT_MARK = 24  # control: a book snapshot was taken here (its position in this stream)
    BOOK_SNAPSHOT = 32  # a book snapshot (snapshots stream): docs/WAL_FORMAT.md "Book snapshots"


#: Kind values reserved for control records (msgpack maps). Readers that filter by
#: instrument keep every record in this range, known to them or not.
CONTROL_KINDS = range(16, 32)

#: Kinds whose payload is an exchange's bytes, stored verbatim.
MESSAGE_KINDS = frozenset({Kind.BINARY, Kind.TEXT, Kind.REST})

#: The newest record-format version this code writes and reads, per kind.
RECORD_VERSION: dict[int, int] = {int(k): 1 for k in Kind}

#: Fields of each control record's msgpack map (all present when written by this code;
#: ``extra`` maps may add more keys, which readers ignore).
CONTROL_FIELDS: dict[int, tuple[str, ...]] = {
    Kind.CONNECT: ("conn", "url"),
    Kind.DISCONNECT: ("conn", "code", "reason"),
    Kind.SUBSCRIBE: ("conn", "instruments"),
    Kind.UNSUBSCRIBE: ("conn", "instruments"),
    Kind.MODE: ("conn", "mode", "instruments"),
    Kind.GAP: ("conn", "from_ns", "to_ns", "reason"),
    Kind.SESSION_START: ("session", "venue", "version", "argv"),
    Kind.SESSION_STOP: ("session", "reason"),
    Kind.SNAPSHOT_MARK: ("session", "snapshot"),
}


def control_payload(kind: int, **fields: Any) -> bytes:
    """The msgpack payload of a control record; every documented field must be given."""
    kind = Kind(kind)
    expected = CONTROL_FIELDS.get(kind)
    if expected is None:
        raise ValueError(f"{kind.name} is not a control record kind")
    missing = [f for f in expected if f not in fields]
    if missing:
        raise ValueError(f"{kind.name} record needs field(s) {', '.join(missing)}")
    return msgpack.packb(fields, use_bin_type=True)


def decode_control(kind: int, version: int, payload: bytes) -> dict[str, Any]:
    """The fields of a control record; refuses a version newer than this reader knows."""
    known = RECORD_VERSION.get(int(kind))
    if known is None or int(kind) not in CONTROL_FIELDS:
        raise WalFormatError(f"record kind {kind} is not a control record this reader knows")
    if version > known:
        raise WalFormatError(
            f"{Kind(kind).name} record version {version} is newer than this reader "
            f"(knows up to {known}); upgrade shrivenq")
    try:
        out = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WalFormatError(f"{Kind(kind).name} record payload is not msgpack: {exc}") from None
    if not isinstance(out, dict):
        raise WalFormatError(f"{Kind(kind).name} record payload is not a msgpack map")
    return out


# Convenience builders: (kind, payload) pairs ready for WalWriter.append(kind, payload, ...).

def connect(conn: int, url: str) -> tuple[int, bytes]:
    return Kind.CONNECT, control_payload(Kind.CONNECT, conn=conn, url=url)


def disconnect(conn: int, code: int | None = None, reason: str = "") -> tuple[int, bytes]:
    return Kind.DISCONNECT, control_payload(Kind.DISCONNECT, conn=conn, code=code, reason=reason)


def subscribe(conn: int, instruments: list[int]) -> tuple[int, bytes]:
    return Kind.SUBSCRIBE, control_payload(Kind.SUBSCRIBE, conn=conn,
                                           instruments=[int(i) for i in instruments])


def unsubscribe(conn: int, instruments: list[int]) -> tuple[int, bytes]:
    return Kind.UNSUBSCRIBE, control_payload(Kind.UNSUBSCRIBE, conn=conn,
                                             instruments=[int(i) for i in instruments])


def mode(conn: int, mode: str, instruments: list[int]) -> tuple[int, bytes]:
    return Kind.MODE, control_payload(Kind.MODE, conn=conn, mode=mode,
                                      instruments=[int(i) for i in instruments])


def gap(conn: int, from_ns: int, to_ns: int, reason: str) -> tuple[int, bytes]:
    return Kind.GAP, control_payload(Kind.GAP, conn=conn, from_ns=int(from_ns),
                                     to_ns=int(to_ns), reason=reason)


def session_start(session: str, venue: str, version: str, argv: list[str],
                  names: dict[int, str] | None = None) -> tuple[int, bytes]:
    """``names``: the instruments' names on the recording day (Kite: token -> tradingsymbol),
    stored as [key, name] pairs, so the day's data keeps its labels after the instruments
    leave the master (expired contracts)."""
    extra = {"names": [[int(k), str(v)] for k, v in names.items()]} if names else {}
    return Kind.SESSION_START, control_payload(Kind.SESSION_START, session=session, venue=venue,
                                               version=version, argv=list(argv), **extra)


def session_names(doc: dict) -> dict[int, str]:
    """The names a SESSION_START record carries (none for older records); malformed entries
    (the record came from disk) are left out."""
    out: dict[int, str] = {}
    pairs = doc.get("names")
    if isinstance(pairs, dict):
        pairs = list(pairs.items())
    if isinstance(pairs, list):
        for pair in pairs:
            if (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and type(pair[0]) is int and 0 <= pair[0] < 2**32     # a Kite token: u32
                    and isinstance(pair[1], str) and pair[1]):
                out[pair[0]] = pair[1]
    return out


def session_stop(session: str, reason: str = "") -> tuple[int, bytes]:
    return Kind.SESSION_STOP, control_payload(Kind.SESSION_STOP, session=session, reason=reason)


def snapshot_mark(session: str, snapshot: int) -> tuple[int, bytes]:
    """Marks where, in the ticks stream, snapshot number ``snapshot`` of ``session`` was taken:
    the books it holds are exactly those built from the records before this one."""
    return Kind.SNAPSHOT_MARK, control_payload(Kind.SNAPSHOT_MARK, session=session,
                                               snapshot=int(snapshot))
