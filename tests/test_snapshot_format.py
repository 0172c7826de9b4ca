"""The BOOK_SNAPSHOT payload as docs/WAL_FORMAT.md describes it, and its versioning: a
snapshot from a newer writer is refused with a message saying so, never misread."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from typer.testing import CliRunner

from shrivenq.books import KiteBooks, state_hash
from shrivenq.books.snapshot import (
    SNAPSHOT_VERSION, decode_kite_snapshot, encode_kite_snapshot, peek_kite_snapshot,
)
from shrivenq.cli import app
from shrivenq.errors import WalFormatError
from shrivenq.kite import KIND_FULL, TICK_DTYPE, frame_keys, parse_frame
from shrivenq.kite.wire import encode_frame
from shrivenq.sim.market import KiteMarket, default_universe
from shrivenq.timeutil import IST
from shrivenq.wal import Kind, WalWriter
from shrivenq.wal import records as rec

T0 = 1_763_610_300 * 10**9          # 2025-11-20 09:15:00 IST


def _state(instruments: int = 3) -> np.ndarray:
    books = KiteBooks()
    books.apply(KiteMarket(default_universe(instruments), seed=7).ticks(50))
    return books.state()


def _repacked(payload: bytes, **changes) -> bytes:
    doc = msgpack.unpackb(payload, raw=False)
    doc.update(changes)
    return msgpack.packb({k: v for k, v in doc.items() if v is not None}, use_bin_type=True)


def test_the_payload_is_the_documented_msgpack_map():
    state = _state()
    payload = encode_kite_snapshot(state[::-1].copy(), "sess-1", 3, T0)
    doc = msgpack.unpackb(payload, raw=False)
    assert list(doc) == ["v", "venue", "format", "session", "snapshot", "wall_ns", "hash", "rows"]
    assert doc["v"] == SNAPSHOT_VERSION == 1
    assert (doc["venue"], doc["format"], doc["session"]) == ("kite", "kite-tick-v1", "sess-1")
    assert (doc["snapshot"], doc["wall_ns"]) == (3, T0)
    # rows: TICK_DTYPE rows back to back, sorted by token, whatever order they were given in
    assert isinstance(doc["rows"], bytes) and len(doc["rows"]) == len(state) * 180
    assert doc["rows"] == state.tobytes() and (np.diff(state["token"].astype(np.int64)) > 0).all()
    assert doc["hash"] == state_hash(state)
    snap = decode_kite_snapshot(payload)
    assert (snap.session, snap.snapshot, snap.wall_ns, snap.hash) == ("sess-1", 3, T0, doc["hash"])
    assert snap.rows.dtype == TICK_DTYPE and snap.rows.tobytes() == state.tobytes()
    assert peek_kite_snapshot(payload).hash == doc["hash"]
    # Keys a reader does not know are ignored (a compatible addition needs no new version).
    assert decode_kite_snapshot(_repacked(payload, extra=[1, 2])).rows.tobytes() == doc["rows"]


@pytest.mark.parametrize("version", [SNAPSHOT_VERSION + 1, 2**40])
@pytest.mark.parametrize("read", [decode_kite_snapshot, peek_kite_snapshot])
def test_a_snapshot_from_a_newer_writer_is_refused_saying_so(read, version):
    payload = encode_kite_snapshot(_state(), "sess-1", 0, T0)
    message = (f"book snapshot version {version} is newer than this reader "
               f"(knows up to {SNAPSHOT_VERSION}); upgrade shrivenq")
    with pytest.raises(WalFormatError) as info:
        read(_repacked(payload, v=version))
    assert str(info.value) == message
    # Refused for its version first, whatever else a newer writer changed: not misread as a
    # damaged or foreign snapshot.
    with pytest.raises(WalFormatError) as info:
        read(_repacked(payload, v=version, format="kite-tick-v2", rows=None, hash=None))
    assert str(info.value) == message


def test_a_damaged_snapshot_is_refused_saying_what_is_wrong():
    payload = encode_kite_snapshot(_state(), "sess-1", 0, T0)
    doc = msgpack.unpackb(payload, raw=False)
    with pytest.raises(WalFormatError, match="do not match their stored hash"):
        decode_kite_snapshot(_repacked(payload, hash=doc["hash"] ^ 1))
    with pytest.raises(WalFormatError, match="whole number of TICK_DTYPE rows"):
        decode_kite_snapshot(_repacked(payload, rows=doc["rows"][:-1]))
    with pytest.raises(WalFormatError, match="format 'binance' is not kite-tick-v1"):
        peek_kite_snapshot(_repacked(payload, format="binance"))
    with pytest.raises(WalFormatError, match="not msgpack"):
        peek_kite_snapshot(b"\xc1")


def _write_log(root, version: int) -> None:
    """A session of full ticks of two instruments once a second from 09:15:01 to 09:15:08,
    with one snapshot (claiming ``version``) and its mark at 09:15:04.5."""
    market = KiteMarket(default_universe(2), seed=3)
    ticks = WalWriter(root, "kite", "ticks", IST, fsync="never")
    snaps = WalWriter(root, "kite", "snapshots", IST, fsync="never")
    books = KiteBooks()
    ticks.append(*rec.session_start("S", "kite", "test", []), T0, 0)
    for k in range(1, 9):
        frame = encode_frame(market.ticks(1, KIND_FULL))
        books.apply(parse_frame(frame))
        ticks.append(Kind.BINARY, frame, T0 + k * 10**9, 0, instruments=frame_keys(frame))
        if k == 4:
            at = T0 + 4_500_000_000
            ticks.append(*rec.snapshot_mark("S", 0), at, 0)
            payload = encode_kite_snapshot(books.state(), "S", 0, at)
            snaps.append(Kind.BOOK_SNAPSHOT, _repacked(payload, v=version), at, 0)
    ticks.append(*rec.session_stop("S"), T0 + 9 * 10**9, 0)
    ticks.close()
    snaps.close()


@pytest.mark.parametrize("args, replayed", [
    (["--verify"], "verified: all 1 snapshots in range equal the replayed books"),
    (["--start", "2025-11-20T09:15:06"], "started from snapshot 0 of session S"),
    # A newer snapshot passed its checksums: it is not damage, and is never skipped as such.
    (["--verify", "--skip-corrupt"], "verified: all 1 snapshots"),
    (["--start", "2025-11-20T09:15:06", "--skip-corrupt"], "started from snapshot 0"),
], ids=["verify", "seek", "verify-skip-corrupt", "seek-skip-corrupt"])
def test_replay_meeting_a_newer_snapshot_stops_with_a_clear_message(tmp_path, args, replayed):
    """replay --verify, and a replay that seeks from the snapshot, exit 1 with one line
    naming the record and its version, --skip-corrupt or not; the same log with a version 1
    snapshot replays."""
    current, newer = tmp_path / "current", tmp_path / "newer"
    _write_log(current, SNAPSHOT_VERSION)
    _write_log(newer, SNAPSHOT_VERSION + 1)
    run = CliRunner()
    ok = run.invoke(app, ["replay", "--data-dir", str(current), *args])
    assert ok.exit_code == 0 and replayed in ok.output, ok.output
    refused = run.invoke(app, ["replay", "--data-dir", str(newer), *args])
    assert refused.exit_code == 1, refused.output
    assert "snapshot record 0" in refused.output
    assert (f"book snapshot version {SNAPSHOT_VERSION + 1} is newer than this reader"
            in refused.output)
    assert "Traceback" not in refused.output


@pytest.mark.parametrize("v", [None, 0, -1, True, "1", 1.0])
def test_a_snapshot_without_a_valid_version_is_refused_as_such(v):
    doc = msgpack.unpackb(encode_kite_snapshot(KiteBooks().state(), "S", 0, 1), raw=False)
    if v is None:
        del doc["v"]
    else:
        doc["v"] = v
    with pytest.raises(WalFormatError, match="no valid version"):
        decode_kite_snapshot(msgpack.packb(doc, use_bin_type=True))
