"""Crash recovery: torn tails are cut, footers rebuilt, good blocks never rewritten, and
after SIGKILL every record the fsync policy acknowledged comes back, in order, byte-exact."""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shrivenq.errors import WalCorruptError
from shrivenq.wal import Kind, WalReader, WalWriter, open_segment, read_wal, repair_segment, verify
from shrivenq.wal import format as fmt

T0 = 1_763_610_300_000_000_000


def crashed_segment(root: Path, n: int = 300) -> tuple[Path, list[bytes]]:
    """A segment as a writer killed mid-block leaves it: blocks, then half a block, no
    footer."""
    payloads = [b"%05d:" % i + b"z" * (i % 50) for i in range(n)]
    with WalWriter(root, "v", block_bytes=500, fsync="never") as w:
        for i, p in enumerate(payloads):
            w.append(Kind.BINARY, p, T0 + i, i, instruments=[i % 3])
    seg = next(root.rglob("*.wal"))
    s = open_segment(seg)
    last = s.blocks[-1]
    data = seg.read_bytes()
    torn = data[:last.offset] + data[last.offset:last.end][: last.frame.size // 2]
    seg.write_bytes(torn)
    kept = sum(b.frame.records for b in s.blocks[:-1])
    return seg, payloads[:kept]


def test_torn_tail_is_read_up_to_the_last_good_block(tmp_path):
    seg, kept = crashed_segment(tmp_path)
    assert open_segment(seg).state == "torn"
    r = WalReader(tmp_path / "v")
    assert r.read().payloads() == kept
    assert r.torn and r.torn[0].segment == seg
    rep = verify(tmp_path)
    assert not rep.clean and any("torn tail" in p for p in rep.problems)


def test_repair_cuts_the_tail_rebuilds_the_footer_and_never_touches_good_blocks(tmp_path):
    seg, kept = crashed_segment(tmp_path)
    s = open_segment(seg)
    good = hashlib.sha256(seg.read_bytes()[:s.good_end]).hexdigest()
    report = repair_segment(seg)
    assert report.action == "footer rebuilt"
    assert report.kept_records == len(kept) and report.kept_blocks == len(s.blocks)
    assert report.dropped_bytes == s.size - s.good_end > 0 and report.dropped_blocks == 1
    assert report.dropped_records > 0
    assert hashlib.sha256(seg.read_bytes()[:s.good_end]).hexdigest() == good
    after = open_segment(seg)
    assert after.state == "closed" and after.footer.records == len(kept)
    assert after.footer.recovered["dropped_bytes"] == report.dropped_bytes
    assert verify(tmp_path).clean
    assert read_wal(tmp_path / "v").payloads() == kept
    assert repair_segment(seg) is None             # idempotent


def test_opening_a_writer_recovers_and_continues_in_a_new_segment(tmp_path):
    seg, kept = crashed_segment(tmp_path)
    with WalWriter(tmp_path, "v") as w:
        assert [r.path for r in w.recovery] == [seg]
        assert w.recovery[0].kept_records == len(kept)
        w.append(Kind.BINARY, b"after", T0 + 10**6, 0)
    segs = sorted(tmp_path.rglob("*.wal"))
    assert [p.name for p in segs] == ["000001.wal", "000002.wal"]
    assert read_wal(tmp_path / "v").payloads() == kept + [b"after"]
    assert verify(tmp_path).clean


def test_a_file_that_is_not_a_segment_does_not_stop_a_new_writer(tmp_path):
    """Damage of an earlier session must not stop today's capture: the writer leaves the file
    as it is, says so, and records into the next segment."""
    seg, kept = crashed_segment(tmp_path)
    seg.write_bytes(b"garbage, not a segment" * 10)
    with WalWriter(tmp_path, "v") as w:
        assert [(r.path, r.action) for r in w.recovery] == [(seg, "left as is")]
        assert "bad magic" in w.recovery[0].reason and "move it aside" in w.recovery[0].reason
        w.append(Kind.BINARY, b"after", T0 + 10**6, 0)
    assert seg.read_bytes() == b"garbage, not a segment" * 10
    assert read_wal(seg.parent / "000002.wal").payloads() == [b"after"]


def test_bytes_appended_to_a_closed_segment_are_a_tail_to_cut_not_a_lost_segment(tmp_path):
    payloads = [b"%05d" % i for i in range(400)]
    with WalWriter(tmp_path, "v", block_bytes=500, fsync="never") as w:
        for i, p in enumerate(payloads):
            w.append(Kind.BINARY, p, T0 + i, i)
    seg = next(tmp_path.rglob("*.wal"))
    closed = seg.read_bytes()
    seg.write_bytes(closed + random.Random(5).randbytes(5000))
    assert open_segment(seg).state == "torn"
    assert read_wal(tmp_path / "v").payloads() == payloads
    assert not verify(tmp_path).clean
    report = repair_segment(seg)
    assert report.dropped_bytes == 5000 and report.kept_records == len(payloads)
    assert seg.read_bytes() == closed and verify(tmp_path).clean


def test_crash_before_the_header_was_written(tmp_path):
    crashed_segment(tmp_path)
    WalWriter(tmp_path, "v").close()
    day = next(tmp_path.rglob("ticks"))
    (day / "000002.wal").write_bytes(fmt.MAGIC[:5])      # torn segment creation
    with WalWriter(tmp_path, "v") as w:
        assert any(r.action == "removed (no blocks)" for r in w.recovery)
    assert verify(tmp_path).clean


@pytest.mark.parametrize("left", [b"", fmt.MAGIC[:5], fmt.MAGIC + b"\x01", b"\0" * 40],
                         ids=["empty", "magic-cut", "magic-and-more", "zeros"])
def test_a_segment_cut_while_being_created_is_read_past(tmp_path, left):
    """What a crash (or a writer caught mid-creation) leaves: a newest segment shorter than
    its header. Reading the stream gives every record before it and names it as torn;
    verify names it; verify --repair removes it."""
    seg, kept = crashed_segment(tmp_path)
    WalWriter(tmp_path, "v").close()                     # repairs: kept records, footer
    cut = seg.with_name("000002.wal")
    cut.write_bytes(left)
    reader = WalReader(tmp_path / "v")
    assert reader.read().payloads() == kept
    assert [(t.segment, t.offset, t.bytes) for t in reader.torn] == [(cut, 0, len(left))]
    report = verify(tmp_path)
    assert not report.clean
    assert any("only %d bytes of a segment header" % len(left) in p for p in report.problems)
    report = verify(tmp_path, repair=True)
    assert report.clean and not cut.exists()
    assert read_wal(tmp_path / "v").payloads() == kept


def test_a_bad_block_in_the_middle_is_never_cut_away(tmp_path):
    payloads = [b"%05d" % i * 10 for i in range(200)]
    with WalWriter(tmp_path, "v", block_bytes=500) as w:
        for i, p in enumerate(payloads):
            w.append(Kind.BINARY, p, T0 + i, i)
    seg = next(tmp_path.rglob("*.wal"))
    s = open_segment(seg)
    # Remove the footer (as a crash would) and damage block 2's body.
    data = bytearray(seg.read_bytes()[:s.good_end])
    bad = s.blocks[2]
    data[bad.offset + fmt.FRAME_SIZE + 5] ^= 0xFF
    seg.write_bytes(data)
    before = seg.read_bytes()
    with WalWriter(tmp_path, "v") as w:
        assert w.recovery[0].action == "left as is"
    assert seg.read_bytes() == before                 # not modified
    with pytest.raises(WalCorruptError) as info:
        read_wal(seg)
    err = info.value
    assert err.segment == str(seg) and err.block == 2 and err.offset == bad.offset
    r = WalReader(seg, on_corrupt="skip")
    got = r.read().payloads()
    skipped = set(range(bad.frame.first_record, bad.frame.first_record + bad.frame.records))
    assert got == [p for i, p in enumerate(payloads) if i not in skipped]
    assert [(p.block, p.offset) for p in r.skipped] == [(2, bad.offset)]


CHILD = """
import os, sys
from shrivenq.wal import WalWriter, Kind
root, it, policy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def durable(n):
    os.write(1, b"%d\\n" % n)
w = WalWriter(root, "v", fsync=policy, block_bytes=4096, flush_interval=0.005,
              segment_bytes=48 * 1024, on_durable=durable)
os.write(1, b"ready\\n")
i = 0
while True:
    w.append(Kind.BINARY, b"%d:%d:" % (it, i) + bytes([i % 251]) * (i % 61),
             1_763_610_300_000_000_000 + i, i, conn=it, instruments=[i % 13])
    i += 1
"""


def power_cut(segments: list[Path], acked: int, rng: random.Random) -> None:
    """Lose what a power cut may lose: any suffix of the unclosed segment past the blocks
    holding the records acknowledged durable (the closed segments were fsynced)."""
    before = 0
    for seg in segments:
        s = open_segment(seg)
        if s.state == "closed":
            before += s.records
            continue
        need = acked - before          # durable records that live in this segment
        floor = 0
        for b in s.blocks:
            if need <= 0:
                break
            floor = b.end
            need -= b.frame.records
        assert need <= 0, "acknowledged records are missing before any cut"
        size = seg.stat().st_size
        cut = rng.randint(floor, size)
        with open(seg, "r+b") as f:
            f.truncate(cut)
        return


def expected(it: int, i: int) -> bytes:
    return b"%d:%d:" % (it, i) + bytes([i % 251]) * (i % 61)


def test_sigkill_at_random_moments_loses_nothing_that_was_durable(tmp_path):
    rng = random.Random(20261121)
    policies = ["every-block", "interval:20", "on-rotate", "never"]
    seen: set[Path] = set()
    kills = 24
    for it in range(1, kills + 1):
        policy = policies[it % len(policies)]
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(it), policy],
                                stdout=subprocess.PIPE)
        out = b""
        while b"ready\n" not in out:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, "writer subprocess died before it was ready"
            out += chunk
        deadline = time.monotonic() + rng.uniform(0.02, 0.35)
        while time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if r:
                out += os.read(proc.stdout.fileno(), 65536)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        out += proc.stdout.read()
        proc.stdout.close()
        lines = out.split(b"\n")[:-1]      # a line cut by the kill has no newline
        acked = max([int(x) for x in lines if x.isdigit()], default=0)

        if it % 2 == 0:
            power_cut(sorted(p for p in tmp_path.rglob("*.wal") if p not in seen), acked, rng)
        with WalWriter(tmp_path, "v") as w:   # recovery, as the next capture would do it
            assert all(r.action != "left as is" for r in w.recovery)
        new = [p for p in sorted(tmp_path.rglob("*.wal")) if p not in seen]
        seen.update(new)
        got = []
        for seg in new:
            got.extend(WalReader(seg).read().payloads())
        assert len(got) >= acked, f"kill {it} ({policy}): {acked} acked, {len(got)} back"
        assert got == [expected(it, i) for i in range(len(got))], f"kill {it} ({policy})"
    assert verify(tmp_path).clean


def test_verify_repair_fixes_crashed_segments_but_not_the_live_one(tmp_path):
    seg, kept = crashed_segment(tmp_path)
    rep = verify(tmp_path)
    assert not rep.clean
    fixed = verify(tmp_path, repair=True)
    assert [r.path for r in fixed.repairs] == [seg] and fixed.clean
    w = WalWriter(tmp_path, "v", block_bytes=50, fsync="every-block")
    w.append(Kind.BINARY, b"x" * 60, T0 + 10**9, 0)
    w.flush()
    live = verify(tmp_path, repair=True)
    assert live.repairs == [] and live.clean
    assert [s.live for s in live.segments] == [False, True]
    w.close()
    assert read_wal(tmp_path / "v").payloads() == kept + [b"x" * 60]


def test_a_real_write_error_from_the_kernel_keeps_what_was_written(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), a real stand-in for
    a full disk: the error names the segment, and every block before it stays readable."""
    child = f"""
import resource, signal, sys
from shrivenq.errors import WalIOError
from shrivenq.wal import WalWriter, Kind
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
w = WalWriter({str(tmp_path)!r}, "v", block_bytes=1000, fsync="every-block")
try:
    for i in range(100_000):
        w.append(Kind.BINARY, b"%06d" % i + bytes(range(256)) * 4, {T0} + i, i)
    w.flush()
except WalIOError as err:
    print("ERR", err.path, err.reason, w.durable_records, flush=True)
    try:
        w.close()
    except WalIOError:
        pass
    sys.exit(0)
sys.exit(1)
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    _, path, *reason, durable = out.stdout.split()
    assert path.endswith("000001.wal") and "large" in " ".join(reason)
    got = read_wal(tmp_path / "v").payloads()
    assert len(got) >= int(durable) > 0
    assert [p[:6] for p in got] == [b"%06d" % i for i in range(len(got))]
    with WalWriter(tmp_path, "v") as w:        # recovery closes the segment
        assert w.recovery and w.recovery[0].action == "footer rebuilt"
    assert verify(tmp_path).clean
