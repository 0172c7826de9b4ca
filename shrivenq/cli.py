"""The ``shrivenq`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="shrivenq: market-data capture for Zerodha Kite and Binance.",
    no_args_is_help=True,
    add_completion=False,
)


# --- Kite login, instrument master and simulator (issue #4) ---------------------------------

auth_app = typer.Typer(help="Kite Connect login and the cached access token.",
                       no_args_is_help=True, add_completion=False)
instruments_app = typer.Typer(help="The Kite instrument master: daily sync and search.",
                              no_args_is_help=True, add_completion=False)
sim_app = typer.Typer(help="Exchange simulators on loopback, for tests and demos.",
                      no_args_is_help=True, add_completion=False)
app.add_typer(instruments_app, name="instruments")
app.add_typer(auth_app, name="auth")
app.add_typer(sim_app, name="sim")

_CACHE_HELP = "Token and instrument cache directory."
_ENV_HELP = "The .env file to read credentials from (the environment wins)."
_ROOT_HELP = "Kite REST root (default https://api.kite.trade); a simulator's for a demo."


def _kite_fail(command: str, err: Exception) -> None:
    typer.echo(f"shrivenq {command}: {err}", err=True)
    raise typer.Exit(1)


@auth_app.command("login")
def auth_login(
    request_token: str | None = typer.Option(
        None, help="The request_token from Kite's redirect (or the whole redirect URL); "
                   "asked for if omitted."),
    cache_dir: str = typer.Option("cache", help=_CACHE_HELP),
    env_file: str = typer.Option(".env", help=_ENV_HELP),
    api_root: str | None = typer.Option(None, help=_ROOT_HELP),
) -> None:
    """Print the login URL, take the request_token, cache the access token (mode 0600)."""
    from shrivenq.errors import ShrivenqError
    from shrivenq.kite import auth

    try:
        creds = auth.load_credentials(env_file=env_file)
        creds.require_secret()
        auth.check_cache_dir(cache_dir)
        if request_token is None:
            typer.echo("Log in to Kite in a browser:\n  " + auth.login_url(creds.api_key))
            typer.echo("Kite then redirects to your app's URL with ?request_token=...")
            request_token = typer.prompt("request_token (or the whole redirect URL)")
        token = auth.login(creds, request_token, cache_dir, root=api_root)
    except ShrivenqError as err:
        _kite_fail("auth login", err)
    when = token.expires_at.astimezone(auth.IST).strftime("%Y-%m-%d %H:%M IST")
    typer.echo(f"Logged in as {token.user_id or '?'}; access token cached in "
               f"{auth.token_path(cache_dir)} (mode 0600) until {when}")


@auth_app.command("status")
def auth_status(
    cache_dir: str = typer.Option("cache", help=_CACHE_HELP),
    env_file: str = typer.Option(".env", help=_ENV_HELP),
) -> None:
    """Whether a usable access token exists (exit 0) or not (exit 1). Does not contact Kite."""
    from shrivenq.errors import AuthError, ShrivenqError
    from shrivenq.kite import auth

    try:
        try:
            creds = auth.load_credentials(env_file=env_file)
        except AuthError:
            creds = None     # no API key: still report what the cache holds
        st = auth.status(cache_dir, creds)
    except ShrivenqError as err:
        _kite_fail("auth status", err)
    typer.echo(("usable: " if st.usable else "not usable: ") + st.message,
               err=not st.usable)
    if not st.usable:
        raise typer.Exit(1)


@instruments_app.command("sync")
def instruments_sync(
    cache_dir: str = typer.Option("cache", help=_CACHE_HELP),
    env_file: str = typer.Option(".env", help=_ENV_HELP),
    api_root: str | None = typer.Option(None, help=_ROOT_HELP),
    force: bool = typer.Option(False, "--force", help="Download even if today's is cached."),
) -> None:
    """Download today's instrument master (once per IST day) into the cache."""
    from shrivenq.errors import ShrivenqError
    from shrivenq.kite import auth, instruments

    try:
        creds = auth.load_credentials(env_file=env_file)
        token = auth.access_token(creds, cache_dir)
        path, downloaded = instruments.sync(
            cache_dir, creds.api_key, token, root=api_root, force=force,
            token_source=auth.ENV_ACCESS_TOKEN if creds.access_token else None)
        count = len(instruments.InstrumentMaster.load(path))
    except ShrivenqError as err:
        _kite_fail("instruments sync", err)
    verb = "downloaded" if downloaded else "already cached today:"
    typer.echo(f"{verb} {count:,} instruments in {path}")


@instruments_app.command("search")
def instruments_search(
    query: str = typer.Argument(..., help='A symbol, name or token: "NIFTY 50", "infy", '
                                          '"NIFTY 26000 CE", 256265.'),
    cache_dir: str = typer.Option("cache", help=_CACHE_HELP),
    limit: int = typer.Option(20, help="At most this many rows."),
    sample: bool = typer.Option(False, "--sample",
                                help="Search the sample master shipped with shrivenq."),
) -> None:
    """Find instruments in the cached master (today's, else the newest)."""
    from shrivenq.errors import ShrivenqError
    from shrivenq.kite import instruments

    if limit < 1:
        _kite_fail("instruments search", f"--limit must be at least 1, not {limit}")
    try:
        master = (instruments.InstrumentMaster.sample() if sample
                  else instruments.load_master(cache_dir))
    except ShrivenqError as err:
        _kite_fail("instruments search", f"{err} (or pass --sample)")
    hits = master.search(query, limit=limit)
    if not hits:
        typer.echo(f"no instrument matches {query!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{'token':>10}  {'exchange':8}  {'tradingsymbol':24}  {'name':24}  "
               f"{'type':4}  {'expiry':10}  {'strike':>9}  {'lot':>5}")
    for i in hits:
        typer.echo(f"{i.instrument_token:>10}  {i.exchange:8}  {i.tradingsymbol:24}  "
                   f"{i.name[:24]:24}  {i.instrument_type:4}  "
                   f"{i.expiry.isoformat() if i.expiry else '':10}  "
                   f"{f'{i.strike:g}' if i.strike else '':>9}  {i.lot_size:>5}")


@sim_app.command("kite")
def sim_kite(
    port: int = typer.Option(8765, help="Ticker WebSocket port (0: any free port)."),
    rest_port: int | None = typer.Option(None, help="REST port (default: --port + 1)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; keep it loopback."),
    rate: float = typer.Option(1.0, help="Ticks per subscribed instrument per second; "
                                         "0: as fast as it can go."),
    instruments: int | None = typer.Option(
        None, help="How many instruments (default: the sample master; more are padded "
                   "with synthetic stocks)."),
    seed: int = typer.Option(1, help="Market seed."),
) -> None:
    """Run a Kite simulator (ticker WebSocket + REST) until Ctrl-C."""
    import asyncio
    import logging
    import math

    from shrivenq.errors import ConfigError
    from shrivenq.sim import check_ports, kite_server

    if not math.isfinite(rate) or rate < 0:
        _kite_fail("sim kite", f"--rate must be a number >= 0, not {rate:g}")
    if instruments is not None and instruments < 1:
        _kite_fail("sim kite", f"--instruments must be at least 1, not {instruments}")
    try:
        check_ports(port, rest_port)
    except ConfigError as err:
        _kite_fail("sim kite", err)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("shrivenq.sim.kite.ws").setLevel(logging.WARNING)
    try:
        asyncio.run(kite_server.run(host=host, port=port, rest_port=rest_port, rate=rate,
                                    instruments=instruments, seed=seed,
                                    on_ready=lambda s: typer.echo(kite_server.banner(s))))
    except KeyboardInterrupt:
        typer.echo("simulator stopped")
    except OSError as err:
        _kite_fail("sim kite", f"cannot listen on {host}: {err.strerror or err}")


@sim_app.command("binance")
def sim_binance(
    port: int = typer.Option(9443, help="Streams WebSocket port."),
    rest_port: Optional[int] = typer.Option(None, help="REST port (default: --port + 1)."),
    market: str = typer.Option("spot", help="spot or usdm."),
    interval: float = typer.Option(0.1, help="Seconds between market updates."),
    seed: int = typer.Option(1, help="Market seed."),
) -> None:
    """Run a Binance simulator (REST + combined streams) until Ctrl-C."""
    from shrivenq.sim.binance_server import run_binance_sim

    _logging(quiet=False)
    _exit_with("sim binance", lambda _: run_binance_sim(
        port=port, rest_port=rest_port, market=market, seed=seed, interval=interval), None)


wal_app = typer.Typer(help="The write-ahead log: inspect, verify and compact what was "
                           "captured.",
                      no_args_is_help=True, add_completion=False)
app.add_typer(wal_app, name="wal")


def _fail(command: str, err: Exception) -> None:
    typer.echo(f"shrivenq wal {command}: {err}", err=True)
    raise typer.Exit(1)      # as every other command's errors (2 is typer's usage errors)


def _ts(ns) -> str:
    import datetime as dt
    if ns is None:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@wal_app.command("inspect")
def wal_inspect(directory: str = typer.Argument("data", help="a data root, venue, day or stream "
                                                              "directory, or one segment file"),
                top: int = typer.Option(5, help="how many of the busiest instruments to list")
                ) -> None:
    """Segments, time ranges, counts, sizes, compression ratio and instruments, from the
    segments' footers (quick: block checksums are checked by `wal verify`). Exit 1 if a
    segment is unreadable or shows a problem."""
    from shrivenq.errors import ShrivenqError
    from shrivenq.wal import inspect
    if top < 0:
        _fail("inspect", ValueError(f"--top must be 0 or more, not {top}"))
    try:
        summaries = inspect(directory)
    except ShrivenqError as err:
        _fail("inspect", err)
    if not summaries:
        typer.echo(f"{directory}: no WAL segments")
        return
    totals: dict[tuple[str, str], list] = {}
    for s in summaries:
        if s.state == "unreadable":
            typer.echo(f"shrivenq wal inspect: {s.problems[0]}", err=True)
            continue
        state = s.state + (" (live)" if s.live else "") + (", compacted" if s.compacted else "")
        typer.echo(f"{s.path}  {state}  {s.size:,} B  {s.blocks} blocks  {s.records:,} records  "
                   f"{_ts(s.first_wall_ns)} .. {_ts(s.last_wall_ns)} UTC  "
                   f"ratio {s.ratio:.1f}x  {len(s.instruments)} instruments")
        for p in s.problems:
            typer.echo(f"  ! {p}")
        t = totals.setdefault((s.venue, s.stream), [0, 0, 0, 0, 0, {}])
        t[0] += 1
        t[1] += s.records
        t[2] += s.payload_bytes
        t[3] += s.stored_bytes
        t[4] += s.size
        for k, c in s.instruments.items():
            t[5][k] = t[5].get(k, 0) + c
    unreadable = [s for s in summaries if s.state == "unreadable"]
    for (venue, stream), (n, recs, payload, stored, size, inst) in sorted(totals.items()):
        ratio = payload / stored if stored else 0.0
        typer.echo(f"{venue}/{stream}: {n} segments, {recs:,} records, {payload:,} B received, "
                   f"{size:,} B on disk, ratio {ratio:.1f}x, {len(inst)} instruments")
        busiest = sorted(inst.items(), key=lambda kv: -kv[1])[:top]
        if busiest:
            typer.echo("  busiest: " + ", ".join(f"{k} ({c:,})" for k, c in busiest))
    if unreadable or any(s.problems for s in summaries):
        raise typer.Exit(1)


@wal_app.command("verify")
def wal_verify(directory: str = typer.Argument("data", help="a data root, venue, day or stream "
                                                             "directory, or one segment file"),
               repair: bool = typer.Option(False, "--repair", help="cut torn tails and rebuild "
                                           "missing footers first (what a writer does after a "
                                           "crash); other damage is never modified")) -> None:
    """Check every checksum and decode every record. Exit 0 only if the log is clean."""
    from shrivenq.errors import ShrivenqError
    from shrivenq.progress import ProgressLine, VerifyProgress
    from shrivenq.wal import verify
    try:
        with ProgressLine() as line:
            report = verify(directory, repair=repair, progress=VerifyProgress(line))
    except ShrivenqError as err:
        _fail("verify", err)
    for r in report.repairs:
        typer.echo(f"repaired: {r}")
    records = sum(s.records for s in report.segments)
    for p in report.problems:
        typer.echo(f"problem: {p}", err=True)
    if not report.segments:
        typer.echo(f"{directory}: no WAL segments", err=True)
        raise typer.Exit(1)
    if report.clean:
        typer.echo(f"OK: {len(report.segments)} segments, {records:,} records, every block "
                   f"verified and decoded")
        return
    typer.echo(f"FAILED: {len(report.problems)} problem(s) in {len(report.segments)} segments",
               err=True)
    raise typer.Exit(1)


@wal_app.command("compact")
def wal_compact(directory: str = typer.Argument("data", help="a data root, venue, day or "
                                                              "stream directory, or one "
                                                              "segment file"),
                level: Optional[int] = typer.Option(
                    None, help="zstd level (default: the level each segment was written at, "
                               "else 1)")) -> None:
    """Rewrite closed segments into large blocks: the same records, byte for byte (checked
    before a segment is replaced), about a third of the size and several times faster to
    replay. Capture does this itself unless run with --no-compact; this is for logs it did
    not finish (a crash, --no-compact, older builds). Safe while capture runs. Exit 1 if a
    segment could not be compacted."""
    from shrivenq.errors import ShrivenqError
    from shrivenq.progress import ProgressLine
    from shrivenq.wal.compact import compact
    from shrivenq.wal.format import MAX_LEVEL, MIN_LEVEL, is_level
    if level is not None and not is_level(level):
        _fail("compact", ValueError(f"--level {level}: a zstd level is from {MIN_LEVEL} to "
                                    f"{MAX_LEVEL}"))
    try:
        with ProgressLine() as line:
            reports = compact(directory, level=level, progress=lambda seg, segs, blk, blks:
                              line.show(f"segment {seg + 1}/{segs}: block {blk:,}/{blks:,}"))
    except ShrivenqError as err:
        _fail("compact", err)
    if not reports:
        typer.echo(f"{directory}: no WAL segments", err=True)
        raise typer.Exit(1)
    done = [r for r in reports if r.compacted]
    for r in reports:
        if r.compacted:
            typer.echo(f"compacted: {r}")
        elif r.failed:
            typer.echo(f"problem: {r}", err=True)
        elif r.skipped not in ("already compacted", "its blocks are large already"):
            typer.echo(f"skipped: {r}")
    before = sum(r.bytes_before for r in done)
    after = sum(r.bytes_after for r in done)
    why: dict[str, int] = {}
    for r in reports:
        if not r.compacted:
            reason = "failed" if r.failed else r.skipped
            why[reason] = why.get(reason, 0) + 1
    line = f"{len(done)} of {len(reports)} segments compacted"
    if done:
        line += f": {before:,} -> {after:,} bytes"
    if why:
        line += f"; {len(reports) - len(done)} left as they are (" + ", ".join(
            f"{reason}: {count}" for reason, count in why.items()) + ")"
    typer.echo(line)
    if any(r.failed for r in reports):
        raise typer.Exit(1)


capture_app = typer.Typer(help="Record a market feed into the WAL.", no_args_is_help=True,
                          add_completion=False)
app.add_typer(capture_app, name="capture")


@capture_app.command("run")
def capture_run(
    symbols: str = typer.Option("", help='Comma-separated names, e.g. "NIFTY 50,NIFTY BANK".'),
    tokens: str = typer.Option("", help="Comma-separated instrument tokens, e.g. 256265,260105."),
    mode: Optional[str] = typer.Option(None, help="Kite: full, quote or ltp (default full)."),
    exchange: str = typer.Option("kite", help="kite or binance."),
    market: str = typer.Option("spot", help="Binance: spot or usdm (USD-M futures)."),
    data_dir: Path = typer.Option(Path("data"), help="Where the WAL goes."),
    cache_dir: Optional[Path] = typer.Option(
        None, help="Kite: instrument master and token cache (default cache)."),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
    until: Optional[str] = typer.Option(None, help="Stop at this time: HH:MM (IST for Kite, "
                                        "UTC for Binance) or ISO."),
    sim: bool = typer.Option(False, "--sim", help="Capture from the built-in simulator."),
    sim_rate: Optional[float] = typer.Option(
        None, help="Kite with --sim: ticks per instrument per second (default 1; "
                   "0: as fast as it can go)."),
    snapshot_interval: Optional[float] = typer.Option(
        None, help="Kite: seconds between book snapshots (default 60)."),
    snapshot_limit: Optional[int] = typer.Option(
        None, help="Binance: levels in each depth snapshot (default 1000)."),
    segment_size: str = typer.Option("100MB", help="Start a new WAL segment once one reaches "
                                     "this size, e.g. 100MB (the block that reaches it is "
                                     "the segment's last, so a segment can exceed it by one "
                                     "block)."),
    fsync: str = typer.Option("interval:1000",
                              help="every-block, interval:MS, on-rotate or never."),
    compact: bool = typer.Option(True, "--compact/--no-compact",
                                 help="Rewrite each closed ticks segment into large blocks "
                                 "(about a third of the size, several times faster to "
                                 "replay); the last one when capture stops."),
    metrics_port: Optional[int] = typer.Option(None, help="Kite: serve /metrics and /health "
                                               "on this port (0-65535)."),
    watchdog: Optional[float] = typer.Option(None, help="Reconnect after this many silent "
                                             "seconds (default 5 for Kite, 30 for Binance)."),
    quiet: bool = typer.Option(False, "--quiet", help="No live status line (for services)."),
) -> None:
    """Record every tick of the subscribed instruments into the WAL until stopped.

    Exit code 0: clean; 1: an error (message on stderr); 3: the feed had gaps."""
    from shrivenq.capture.runner import CaptureRequest, run_capture

    _logging(quiet)
    req = CaptureRequest(
        exchange=exchange, market=market, symbols=_split(symbols), tokens=_split(tokens), mode=mode, data_dir=data_dir,
        cache_dir=cache_dir, duration=duration, until=until, sim=sim, sim_rate=sim_rate,
        snapshot_interval=snapshot_interval, segment_size=segment_size, fsync=fsync,
        compact=compact,
        metrics_port=metrics_port, watchdog=watchdog, snapshot_limit=snapshot_limit,
        quiet=quiet)
    _exit_with("capture run", run_capture, req)


@app.command("replay")
def replay(
    start: Optional[str] = typer.Option(None, help="From this time, e.g. 2026-11-20T09:15 "
                                        "(IST unless a zone is given)."),
    end: Optional[str] = typer.Option(None, help="Up to (not including) this time."),
    symbols: str = typer.Option("", help='Comma-separated names, e.g. "NIFTY 50".'),
    tokens: str = typer.Option("", help="Comma-separated instrument tokens."),
    data_dir: Path = typer.Option(Path("data"), help="Where the WAL is."),
    cache_dir: Path = typer.Option(Path("cache"), help="Instrument master (for --symbols)."),
    every: Optional[str] = typer.Option(
        None, help="With --out: sample books every 1s, 5m... (from --start, else on the IST "
                   "clock)."),
    out: Optional[Path] = typer.Option(None, help="Write book states: .csv, .jsonl or .parquet."),
    verify: bool = typer.Option(False, "--verify", help="Check the replayed books against "
                                "every snapshot in range; exit 4 if one differs, a marked "
                                "snapshot or a snapshot's mark is lost, or none lies in "
                                "range."),
    skip_corrupt: bool = typer.Option(False, "--skip-corrupt", help="Skip (and report) "
                                      "damaged or missing parts of the WAL instead of "
                                      "stopping; exit 3 if anything was left out."),
    exchange: str = typer.Option("kite", help="kite or binance."),
    market: str = typer.Option("spot", help="Binance: spot or usdm."),
) -> None:
    """Rebuild the books from the recorded ticks, deterministically.

    Prints a summary per instrument (ticks, first/last time, last book, gaps); on a terminal,
    a progress line on stderr while it works. Exit codes: 0 done; 1 an error (a bad
    argument, no data in range, a damaged WAL); 3 done with --skip-corrupt, but parts of the
    WAL were left out; 4 --verify failed."""
    import io

    from shrivenq.progress import ProgressLine, ReplayProgress
    from shrivenq.replay.runner import ReplayRequest, run_replay

    _logging(quiet=True)
    req = ReplayRequest(start=start, end=end, symbols=_split(symbols), tokens=_split(tokens),
                        data_dir=data_dir, cache_dir=cache_dir, every=every, out=out,
                        verify=verify, skip_corrupt=skip_corrupt, exchange=exchange,
                        market=market)

    def run(request: ReplayRequest) -> int:
        summary = io.StringIO()     # printed once the progress line is gone
        with ProgressLine() as line:
            code = run_replay(request, out=summary, progress=ReplayProgress(
                line, binance=request.exchange == "binance"))
        typer.echo(summary.getvalue(), nl=False)
        return code

    _exit_with("replay", run, req)


def _exit_with(command: str, run, request) -> None:
    """Run a library entry point; its return value is the exit code, and an error it raises
    on purpose is one line on stderr and exit 1."""
    from shrivenq.errors import ShrivenqError

    try:
        code = run(request)
    except ShrivenqError as err:
        typer.echo(f"shrivenq {command}: {err}", err=True)
        raise typer.Exit(1)
    raise typer.Exit(code)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets' own connection chatter (ours and the in-process simulator's) is noise here;
    # shrivenq's feed logs every drop and reconnect itself.
    for name in ("websockets", "shrivenq.kite.feed.ws", "shrivenq.sim", "shrivenq.sim.kite.ws"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
