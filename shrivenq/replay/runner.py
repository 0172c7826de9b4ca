"""``shrivenq replay`` as a library call: check the arguments, replay, write or summarise.

Exit codes: 0 done (and, with --verify, every snapshot in range matched); 1 an error (bad
argument, no data, a damaged segment); 3 replayed with --skip-corrupt, but damaged or
missing parts of the WAL were left out (listed); 4 --verify failed: a replayed book differs
from the snapshot the live engine stored, a snapshot the ticks stream marks is lost, a
snapshot's mark is missing from the ticks stream (ticks lost with it), or no snapshot lies
in the range, so nothing was checked.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

from shrivenq.errors import ConfigError, ReplayError
from shrivenq.replay.dataset import Dataset
from shrivenq.replay.kite import KiteReplay, ReplayResult, stream_of
from shrivenq.replay.output import BookWriter, book_rows, sample
from shrivenq.timeutil import format_ns, parse_datetime, parse_duration_ns, to_ns

# 3: replayed, but with --skip-corrupt damaged or missing WAL data was left out (listed).
EXIT_OK, EXIT_ERROR, EXIT_SKIPPED, EXIT_MISMATCH = 0, 1, 3, 4


@dataclass
class ReplayRequest:
    start: str | None = None
    end: str | None = None
    symbols: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    data_dir: Path = Path("data")
    cache_dir: Path = Path("cache")
    every: str | None = None
    out: Path | None = None
    verify: bool = False
    skip_corrupt: bool = False
    exchange: str = "kite"
    market: str = "spot"


def _tokens(req: ReplayRequest, ds: Dataset) -> list[int] | None:
    tokens = []
    for text in req.tokens:
        try:
            tokens.append(int(text))
        except ValueError:
            raise ConfigError(f"--tokens: {text!r} is not an instrument token") from None
    return ds.tokens_for(req.symbols or None, tokens or None) if (req.symbols or tokens) else None


Progress = Callable[[int, int, "int | None", "int | None"], None]


def _reporting(batches: Iterable, progress: Progress, start_ns: int | None,
               end_ns: int | None) -> Iterator:
    ticks = 0
    for batch in batches:
        if len(batch.rows):
            if start_ns is None:            # the range starts at its first tick
                start_ns = int(batch.wall_ns[0])
            ticks += len(batch.rows)
            progress(ticks, int(batch.wall_ns[-1]), start_ns, end_ns)
        yield batch


def run_replay(req: ReplayRequest, out: TextIO | None = None,
               progress: Progress | None = None) -> int:
    """Replay as ``req`` asks, print the summary to ``out``, return the exit code.
    ``progress(ticks so far, receive time of the last, start_ns, end_ns)`` is called once
    per batch read (a few thousand ticks, or Binance stream messages, each); start_ns is the
    first one's time when ``req`` gives no start, end_ns None when it gives no end."""
    out = out or sys.stdout
    if req.exchange == "binance":
        return _run_binance(req, out, progress)
    if req.exchange != "kite":
        raise ConfigError(f"--exchange {req.exchange!r} is not one of kite, binance")
    start_ns = to_ns(parse_datetime(req.start, "--start")) if req.start else None
    end_ns = to_ns(parse_datetime(req.end, "--end")) if req.end else None
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise ConfigError(f"--start {req.start} is not before --end {req.end}")
    every_ns = parse_duration_ns(req.every, "--every") if req.every else None
    if every_ns is not None and req.out is None:
        raise ConfigError("--every samples the books written by --out; give --out too")
    ds = Dataset(req.data_dir, req.cache_dir)
    tokens = _tokens(req, ds)
    # Labels: the master's, overridden by the names each session start read records (the
    # replay adds them to this very dict, so the writer's labels follow).
    names = ds.names()
    replay = KiteReplay(ds.vdir, on_corrupt="skip" if req.skip_corrupt else "raise",
                        names=names)
    # Created last: nothing between it and the try below can fail and leave its partial file.
    writer = BookWriter(req.out, names) if req.out is not None else None
    batches = replay.ticks(start_ns, end_ns, tokens, verify=req.verify, books=writer is not None)
    if progress is not None:
        batches = _reporting(batches, progress, start_ns, end_ns)
    complete = False
    try:
        if writer is None:
            for _ in batches:
                pass
        elif every_ns is None:
            for batch in batches:
                writer.write(book_rows(batch.books, batch.wall_ns))
        else:
            for rows in sample(batches, start_ns, end_ns, every_ns, lambda: replay.result):
                writer.write(rows)
        if replay.result.ticks == 0:     # an error: an earlier --out file stays as it was
            where = (f" between {format_ns(start_ns)} and {format_ns(end_ns)} IST"
                     if start_ns or end_ns else "")
            skipped = replay.result.skipped
            raise ReplayError(f"no ticks{where} in {ds.vdir}"
                              + (" for those instruments" if tokens else "")
                              + (f"; --skip-corrupt left out {len(skipped)} damaged or missing "
                                 f"part(s): {'; '.join(skipped[:5])}" if skipped else ""))
        complete = True
    finally:
        if writer is not None:
            writer.close(complete)
    result = replay.result
    print(format_result(result, names, writer, tokens), file=out)
    if verify_failed(result):
        return EXIT_MISMATCH
    return EXIT_SKIPPED if result.skipped else EXIT_OK


def verify_failed(res: ReplayResult) -> bool:
    """A verifying pass failed: a book differs, a marked snapshot is lost, or there was
    nothing to check (a verify that checked nothing must not read as a pass)."""
    return res.verify and bool(res.mismatches or res.snapshots_lost or res.marks_lost
                               or not res.snapshots_checked)


def damage_lines(skipped: list[str], torn: list[str]) -> list[str]:
    """What the read left out, for a replay summary."""
    lines = []
    if skipped:
        ticks = [p for p in skipped if stream_of(p) != "snapshots"]
        lines.append(f"SKIPPED (--skip-corrupt): {len(skipped)} damaged or missing part(s) of "
                     "the WAL" + ("; the books lack what they held:" if ticks else
                                  " (snapshots only: seeks and --verify could not use them):"))
        lines += [f"  {p}" for p in skipped[:20]]
        if len(skipped) > 20:
            lines.append(f"  ... and {len(skipped) - 20} more (`shrivenq wal verify` lists all)")
    for t in torn:
        lines.append(f"note: {t} (a crash's leftover; `shrivenq wal verify --repair` cuts it)")
    return lines


def format_result(res: ReplayResult, names: dict[int, str], writer: BookWriter | None,
                  tokens: list[int] | None = None) -> str:
    lines = list(res.notes)
    if res.seeded_from is not None:
        lines.append(f"started from snapshot {res.seeded_from.snapshot} of session "
                     f"{res.seeded_from.session[:8]} taken {format_ns(res.seeded_from.wall_ns)}")
    header = (f"{'symbol':<24}{'token':>10}{'ticks':>9}  {'first (IST)':<23}  {'last (IST)':<23}"
              f"{'last':>11}{'bid':>11}{'ask':>11}{'volume':>12}{'oi':>11}")
    lines += [header, "-" * len(header)]
    for token in sorted(res.instruments):
        s = res.instruments[token]
        b = s.book
        div = float(b["divisor"]) if b is not None and b["divisor"] else 100.0

        def px(v):
            return f"{int(v) / div:.2f}" if int(v) else "-"

        lines.append(
            f"{names.get(token, '')[:23]:<24}{token:>10}{s.ticks:>9}  {format_ns(s.first_wall_ns):<23}"
            f"  {format_ns(s.last_wall_ns):<23}{px(b['last_price']):>11}"
            f"{px(b['bid_price'][0]):>11}{px(b['ask_price'][0]):>11}{int(b['volume']):>12}"
            f"{int(b['oi']):>11}")
    quiet = sorted(set(tokens or ()) - set(res.instruments))
    if quiet:
        lines.append(f"no ticks in range for {len(quiet)} of the instruments asked for: "
                     + ", ".join(f"{names[t]} ({t})" if names.get(t) else str(t)
                                 for t in quiet[:10]) + (" ..." if len(quiet) > 10 else ""))
    lines.append(f"{res.ticks:,} ticks replayed")
    if res.bad_frames:
        lines.append(f"{res.bad_frames} malformed frame(s): their good packets were replayed")
    if res.gaps:
        lines.append(f"GAPS: {len(res.gaps)} span(s) in which capture did not receive the feed:")
        for g in res.gaps:
            if g.get("to_ns") is None:           # not reconnected within the range
                lines.append(f"  conn {g['conn']} from {format_ns(g['from_ns'])} on "
                             f"({g['reason']})")
                continue
            span = (g["to_ns"] - g["from_ns"]) / 1e9 if g.get("to_ns") and g.get("from_ns") else 0
            lines.append(f"  conn {g['conn']} from {format_ns(g['from_ns'])} for {span:.2f}s "
                         f"({g['reason']})")
    else:
        lines.append("no gaps recorded in range")
    lines += damage_lines(res.skipped, res.torn)
    if writer is not None:
        lines.append(f"wrote {writer.rows:,} book rows to {writer.path}")
    if res.verify:
        lines += _verify_lines(res)
    return "\n".join(lines)


def _verify_lines(res: ReplayResult) -> list[str]:
    lines = []
    for session, number, wall in res.snapshots_unwritten:
        lines.append(f"note: snapshot {number} of session {session[:8]} at {format_ns(wall)} "
                     "was marked but never written: the session ended without a stop "
                     "record (a crash) right after")
    if res.mismatches:
        lines.append(f"VERIFY FAILED: {len(res.mismatches)} of {res.snapshots_checked} "
                     "snapshots differ from the replayed books:")
        for m in res.mismatches[:10]:
            lines.append(f"  snapshot {m.snapshot} of session {m.session[:8]} at "
                         f"{format_ns(m.wall_ns)}:")
            lines += [f"    {d}" for d in m.details[:10]]
    for session, number, wall in res.marks_unwritten:
        lines.append(f"note: snapshot {number} of session {session[:8]} at {format_ns(wall)} "
                     "has no mark: the session ended without a stop record (a crash) before "
                     "the mark reached the disk")
    lines += _listed(res.marks_lost, f"VERIFY FAILED: the ticks stream lacks the marks of "
                     f"{len(res.marks_lost)} snapshot(s) in range, so ticks were lost around "
                     "them (or the session's end was):")
    lines += _listed(res.snapshots_lost, f"VERIFY FAILED: {len(res.snapshots_lost)} "
                     "snapshot(s) marked in the ticks stream are not in the snapshots stream "
                     "(lost or damaged), so the books could not be checked there:")
    failed = res.mismatches or res.snapshots_lost or res.marks_lost
    if not res.snapshots_checked and not failed:
        lines.append("VERIFY FAILED: no snapshot in range to check the replayed books "
                     "against; nothing was verified")
    elif not failed:
        lines.append(f"verified: all {res.snapshots_checked} snapshots in range equal the "
                     "replayed books")
    elif not res.mismatches and res.snapshots_checked:
        lines.append(f"the other {res.snapshots_checked} snapshots in range equal the "
                     "replayed books")
    return lines


def _listed(snapshots: list[tuple[str, int, int]], heading: str) -> list[str]:
    """``heading`` and the first ten (session, number, time) of ``snapshots``, if any."""
    if not snapshots:
        return []
    lines = [heading] + [f"  snapshot {n} of session {s[:8]} at {format_ns(w)}"
                         for s, n, w in snapshots[:10]]
    if len(snapshots) > 10:
        lines.append(f"  ... and {len(snapshots) - 10} more")
    return lines


def _run_binance(req: ReplayRequest, out: TextIO, progress: Progress | None = None) -> int:
    """Binance books rebuilt from the recorded stream messages and REST snapshots, through the
    same sync machine as capture. No snapshots are stored for Binance yet, so replay always
    starts at a session's start, and there is nothing to --verify against."""
    from shrivenq.replay.binance import replay_wal
    from shrivenq.binance.decimal import format_fixed
    from shrivenq.timeutil import UTC

    unsupported = [name for name, given in (("--start", req.start), ("--verify", req.verify),
                                            ("--out", req.out), ("--every", req.every),
                                            ("--tokens", req.tokens)) if given]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)}: not available for Binance yet (its "
                          "books are not snapshotted, so replay runs from each session start)")
    venue = {"spot": "binance", "usdm": "binance-usdm"}.get(req.market)
    if venue is None:
        raise ConfigError(f"--market {req.market!r} is not one of spot, usdm")
    vdir = Path(req.data_dir) / venue
    if not vdir.is_dir():
        raise ReplayError(f"no Binance {req.market} data under {req.data_dir} (expected {vdir})")
    end_ns = to_ns(parse_datetime(req.end, "--end", UTC)) if req.end else None
    first: list[int] = []

    def report(records: int, wall_ns: int) -> None:
        if not first:
            first.append(wall_ns)
        progress(records, wall_ns, first[0], end_ns)

    replay = replay_wal(vdir, end_ns=end_ns, on_corrupt="skip" if req.skip_corrupt else "raise",
                        progress=report if progress is not None else None)
    books = replay.books
    if books is None or not books.syncs:
        raise ReplayError(f"no Binance capture session in {vdir}")
    wanted = {s.upper() for s in req.symbols}
    unknown = sorted(wanted - set(books.syncs))
    if unknown:
        import difflib

        hints = {u: difflib.get_close_matches(u, list(books.syncs), n=3) for u in unknown}
        raise ConfigError("--symbols: not in this capture: " + "; ".join(
            f"{u}" + (f" (closest: {', '.join(h)})" if h else "") for u, h in hints.items())
            + f". Captured: {', '.join(sorted(books.syncs))}")
    header = f"{'symbol':<12}{'synced':>8}{'bid levels':>12}{'ask levels':>12}{'best bid':>20}{'best ask':>20}"
    lines = [header, "-" * len(header)]
    for symbol, sync in sorted(books.syncs.items()):
        if wanted and symbol not in wanted:
            continue
        spec = books.specs[symbol]
        bid, ask = sync.book.best_bid(), sync.book.best_ask()

        def px(level):
            return format_fixed(level[0], spec.price_scale, spec.price_scale) if level else "-"

        lines.append(f"{symbol:<12}{'yes' if sync.synced else 'no':>8}{sync.book.depth(0):>12}"
                     f"{sync.book.depth(1):>12}{px(bid):>20}{px(ask):>20}")
    gaps = [a for a in replay.decisions if a[0] == "gap"]
    lines.append(f"{replay.records:,} records replayed, {replay.sessions} session(s); books as "
                 "of the last session")
    lines.append(f"GAPS: {len(gaps)} resync(s): " + ", ".join(f"{a[1]} ({a[2]})" for a in gaps[:10])
                 if gaps else "no gaps in the last session")
    if not replay.ended and end_ns is None:
        lines.append("note: the last session has no end record: its capture is still running, "
                     "or it stopped without closing (a crash, a failed disk); the books are "
                     "as of its last record")
    lines += damage_lines(replay.skipped, replay.torn)
    print("\n".join(lines), file=out)
    return EXIT_SKIPPED if replay.skipped else EXIT_OK
