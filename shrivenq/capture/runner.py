"""``shrivenq capture run`` as a library call: check every argument, resolve instruments and
credentials (or start the built-in simulator), run the capture with a live status line and
optional metrics, close cleanly on SIGINT/SIGTERM, print a summary, return the exit code.

Exit codes: 0 clean; 1 an error (bad argument, credentials, disk) stopped it, before
anything was written or part-way (what was received is then kept and the WAL closed
cleanly); 3 the capture ran to its end but lost something: a gap, a span in which the feed
was not received.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import signal
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from shrivenq.capture.kite import CaptureSummary, KiteCapture, KiteCaptureSettings
from shrivenq.capture.metrics import MetricsServer, health_of
from shrivenq.capture.status import Rate, StatusLine, fmt_bytes
from shrivenq.errors import ConfigError, ShrivenqError
from shrivenq.kite.protocol import MODES
from shrivenq.timeutil import IST, parse_datetime
from shrivenq.wal import FsyncPolicy

log = logging.getLogger("shrivenq.capture")

EXIT_OK, EXIT_ERROR, EXIT_LOSS = 0, 1, 3

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
               "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """'100MB', '64MiB', '1gb', '500000' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"--segment-size {text!r} is not a size like 100MB or 64MiB")
    size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if size < 64 * 1024:
        raise ConfigError(f"--segment-size {text!r} is too small (at least 64KiB)")
    return size


def seconds_until(text: str, now: datetime | None = None, tz=IST) -> float:
    """Seconds from now until a wall-clock time: 'HH:MM' (in ``tz``, today), 'HH:MM+05:30', or
    an ISO datetime. A time already past is an error, not tomorrow."""
    now = now or datetime.now(tz)
    target = parse_datetime(text, "--until", tz, day=now.astimezone(tz).date())
    seconds = (target - now).total_seconds()
    if seconds <= 0:
        raise ConfigError(f"--until {text} has already passed ({target.isoformat()})")
    return seconds


@dataclass
class CaptureRequest:
    exchange: str = "kite"
    market: str = "spot"          # Binance: spot or usdm
    symbols: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    mode: str | None = None       # Kite; None: "full"
    data_dir: Path = Path("data")
    cache_dir: Path | None = None  # Kite; None: Path("cache")
    duration: float | None = None
    until: str | None = None
    sim: bool = False
    sim_rate: float | None = None  # Kite --sim; None: 1.0
    snapshot_interval: float | None = None  # Kite; None: 60.0
    segment_size: str = "100MB"
    fsync: str = "interval:1000"
    compact: bool = True
    metrics_port: int | None = None
    watchdog: float | None = None  # None: 5 s for Kite, 30 s for Binance
    snapshot_limit: int | None = None  # Binance; None: 1000
    quiet: bool = False


#: Kite's defaults for the options left None (None means "not given on the command line", so
#: that Binance capture can refuse the Kite-only ones the user did give).
KITE_DEFAULTS = {"mode": "full", "cache_dir": Path("cache"), "sim_rate": 1.0,
                 "snapshot_interval": 60.0}
BINANCE_SNAPSHOT_LIMIT = 1000


def _token_modes(req: CaptureRequest, master) -> tuple[dict[int, str], dict[int, str]]:
    """The mode of each token to subscribe, and each one's name (its token where the master
    has none)."""
    if req.mode not in MODES:
        raise ConfigError(f"--mode {req.mode!r} is not one of {', '.join(MODES)}")
    names: dict[int, str] = {}
    unknown = []
    tokens: dict[int, str] = {}
    for ins in master.resolve(req.symbols) if req.symbols else []:
        tokens[ins.token] = req.mode
        names[ins.token] = ins.tradingsymbol
    for text in req.tokens:
        try:
            token = int(text)
        except ValueError:
            raise ConfigError(f"--tokens: {text!r} is not an instrument token (an integer)") from None
        if not 0 < token < 2**32:
            raise ConfigError(f"--tokens: {token} is outside the range of Kite tokens")
        ins = master.get(token)
        if ins is None:
            unknown.append(token)
        tokens[token] = req.mode
        names[token] = ins.tradingsymbol if ins else str(token)
    if not tokens:
        raise ConfigError("nothing to capture: give --symbols and/or --tokens")
    if unknown:
        log.warning("%d token(s) are not in the instrument master, subscribing anyway: %s%s",
                    len(unknown), ", ".join(map(str, unknown[:5])),
                    " ..." if len(unknown) > 5 else "")
    return tokens, names


def _check_seconds(option: str, value: float | None, zero_ok: bool = False) -> None:
    """A number of seconds (or a rate) from the command line: finite, positive (or >= 0 when
    ``zero_ok``); NaN and infinity are refused, not silently turned into 0 or forever."""
    if value is None:
        return
    if not math.isfinite(value):
        raise ConfigError(f"{option} {value} is not a finite number")
    if value < 0 or (value == 0 and not zero_ok):
        bound = "zero or positive" if zero_ok else "positive"
        raise ConfigError(f"{option} must be {bound}, not {value:g}")


def check_port(option: str, port: int | None) -> None:
    """A TCP port to listen on: 0 (any free port) to 65535."""
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"{option} {port} is not a TCP port: a port must be 0-65535")


def _check(req: CaptureRequest) -> None:
    _check_seconds("--duration", req.duration)
    if req.duration is not None and req.until:
        raise ConfigError("give --duration or --until, not both")
    _check_seconds("--snapshot-interval", req.snapshot_interval)
    _check_seconds("--watchdog", req.watchdog)
    _check_seconds("--sim-rate", req.sim_rate, zero_ok=True)   # 0: as fast as it can go
    check_port("--metrics-port", req.metrics_port)
    FsyncPolicy.parse(req.fsync)


class KiteStatus:
    """The Kite capture's status line: connections, instruments, ticks/s, ticks, gaps, WAL."""

    def __init__(self) -> None:
        self.rate = Rate()

    def __call__(self, capture: KiteCapture) -> str | None:
        if capture.recorder is None or capture.feed is None:
            return None
        c = capture.recorder.counters
        h = health_of(capture)
        st = capture.ticks.stats
        ratio = st.payload_bytes / st.bytes_on_disk if st.bytes_on_disk else 0
        colour = "green" if h["connected"] else "red"
        return (f"[{colour}]●[/] kite {h['connections_up']}/{h['connections']} conn · "
                f"{len(capture.settings.token_modes)} instruments · "
                f"{self.rate.update(c.ticks):,.0f} ticks/s · {c.ticks:,} ticks · gaps {c.gaps} · "
                f"WAL {fmt_bytes(st.bytes_on_disk)} ({ratio:.1f}x) · queue {h['queue_depth']}")


def format_summary(s: CaptureSummary, data_dir: Path) -> str:
    c = s.counters
    lines = [
        f"capture {s.session[:8]} {s.stop_reason} after {s.seconds:.1f}s",
        f"  instruments {s.instruments} over {s.connections} connection(s)",
        f"  messages {c.messages:,} ({fmt_bytes(c.bytes)}), ticks {c.ticks:,}, "
        f"heartbeats {c.heartbeats:,}, text {c.text_messages}",
        f"  WAL records {s.records:,}, {fmt_bytes(s.wal_bytes)} on disk for "
        f"{fmt_bytes(s.payload_bytes)} of payload ({s.ratio:.1f}x), snapshots {c.snapshots}",
        f"  data in {data_dir / 'kite'}",
    ]
    if s.unwritten:
        lines.append(f"  LOST: {s.unwritten:,} records received but not written (the WAL "
                     "failed; what is on disk before them is intact)")
    if c.malformed_frames:
        lines.append(f"  malformed frames: {c.malformed_frames} (stored raw)")
    if c.exchange_errors:
        lines.append(f"  error messages from Kite: {c.exchange_errors}")
    if s.gaps:
        lines.append(f"  GAPS: {len(s.gaps)} span(s) in which the feed was not received:")
        for g in s.gaps[:10]:
            lines.append(f"    conn {g['conn']}: {(g['to_ns'] - g['from_ns']) / 1e9:.2f}s "
                         f"({g['reason']})")
    elif s.unwritten:
        lines.append("  no feed gaps before the WAL failed")
    else:
        lines.append("  no gaps: every message sent while connected was received")
    return "\n".join(lines)


def run_capture(req: CaptureRequest, out: TextIO | None = None) -> int:
    """The whole of ``shrivenq capture run``. Returns the exit code; errors the user can fix
    raise ShrivenqError before anything is connected or written."""
    out = out or sys.stdout
    _check(req)
    if req.exchange == "binance":
        return _run_binance(req, out)
    if req.exchange != "kite":
        raise ConfigError(f"--exchange {req.exchange!r} is not one of kite, binance")
    if req.snapshot_limit is not None:
        raise ConfigError("--snapshot-limit is for Binance; Kite capture snapshots its books "
                          "every --snapshot-interval seconds")
    if req.market != "spot":
        raise ConfigError(f"--market is for Binance (spot or usdm); Kite's instruments come "
                          f"from --symbols or --tokens, not --market {req.market}")
    for name, default in KITE_DEFAULTS.items():
        if getattr(req, name) is None:
            setattr(req, name, default)
    segment_bytes = parse_size(req.segment_size)
    duration = req.duration if req.until is None else seconds_until(req.until)
    sim_ctx = None
    if req.sim:
        from shrivenq.kite.instruments import InstrumentMaster
        from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, SimThread

        master = InstrumentMaster.sample()
        token_modes, names = _token_modes(req, master)
        sim_ctx = SimThread(rate=req.sim_rate)
        api_key, access_token = DEMO_API_KEY, DEMO_ACCESS_TOKEN
    else:
        from shrivenq.kite import auth
        from shrivenq.kite.instruments import load_master

        creds = auth.load_credentials()
        access_token = auth.access_token(creds, req.cache_dir)
        api_key = creds.api_key
        token_modes, names = _token_modes(req, load_master(req.cache_dir))
    settings = KiteCaptureSettings(
        token_modes=token_modes, data_dir=req.data_dir, api_key=api_key,
        access_token=access_token, duration=duration, snapshot_interval=req.snapshot_interval,
        segment_bytes=segment_bytes, fsync=req.fsync, compact=req.compact,
        watchdog=5.0 if req.watchdog is None else req.watchdog,
        session_note=[f"mode={req.mode}", *list(names.values())[:50]],
        names={t: n for t, n in names.items() if n != str(t)})
    if sim_ctx is None:
        return _run(settings, req, out)
    with sim_ctx as sim:
        settings.ws_root = sim.ws_url
        print(f"simulator on {sim.ws_url} (demo credentials)", file=sys.stderr)
        return _run(settings, req, out)


def _run_binance(req: CaptureRequest, out: TextIO) -> int:
    """Binance capture: symbols straight from the exchange's exchangeInfo; times in UTC."""
    from shrivenq.binance.rest import check_limit
    from shrivenq.binance.streams import check_market
    from shrivenq.capture.binance import BinanceCaptureSettings, run_binance_capture
    from shrivenq.timeutil import UTC

    for given, option in ((req.tokens, "--tokens"), (req.metrics_port is not None, "--metrics-port"),
                          (req.mode is not None, "--mode"),
                          (req.snapshot_interval is not None, "--snapshot-interval"),
                          (req.sim_rate is not None, "--sim-rate"),
                          (req.cache_dir is not None, "--cache-dir")):
        if given:
            raise ConfigError(f"{option} is for Kite; Binance capture records depth, trades and "
                              "best bid/offer of --symbols")
    if not req.symbols:
        raise ConfigError("nothing to capture: give --symbols, e.g. BTCUSDT,ETHUSDT")
    check_market(req.market)
    limit = BINANCE_SNAPSHOT_LIMIT if req.snapshot_limit is None else req.snapshot_limit
    try:
        check_limit(req.market, limit)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg.replace("snapshot limit", "--snapshot-limit", 1)
                          if msg.startswith("snapshot limit") else f"--snapshot-limit: {msg}"
                          ) from None
    duration = req.duration if req.until is None else seconds_until(req.until, tz=UTC)
    settings = BinanceCaptureSettings(
        symbols=[s.upper() for s in req.symbols], data_dir=req.data_dir, market=req.market,
        duration=duration, snapshot_limit=limit, segment_bytes=parse_size(req.segment_size),
        fsync=req.fsync, compact=req.compact, session_note=[])
    if req.watchdog is not None:
        settings.watchdog = req.watchdog
    return run_binance_capture(settings, sim=req.sim, out=out,
                               status=not req.quiet and sys.stderr.isatty())


def _os_reason(exc: OSError) -> str:
    """'address already in use' from an OSError, without asyncio's wording around it."""
    import errno
    import os

    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _run(settings: KiteCaptureSettings, req: CaptureRequest, out: TextIO) -> int:
    capture = KiteCapture(settings)
    summary: CaptureSummary | None = None

    async def main() -> CaptureSummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        metrics = None
        if req.metrics_port is not None:
            # Before capture.run(): a port that cannot be listened on stops us before the WAL
            # is opened, so nothing is written.
            try:
                metrics = await MetricsServer(capture, port=req.metrics_port).start()
            except OSError as exc:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
                raise ConfigError(f"--metrics-port {req.metrics_port}: "
                                  f"{_os_reason(exc)}") from None
            print(f"metrics on http://127.0.0.1:{metrics.port}/metrics and /health",
                  file=sys.stderr)
        try:
            if req.quiet or not sys.stderr.isatty():
                return await capture.run(stop)
            with StatusLine(KiteStatus()) as status:
                return await capture.run(stop, on_status=status)
        finally:
            if metrics is not None:
                await metrics.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        summary = asyncio.run(main())
    except ShrivenqError:
        if capture.recorder is None:
            raise     # failed before capturing anything: a plain error, exit 1
        summary = capture.summary("failed")
        print(format_summary(summary, settings.data_dir), file=out)
        raise
    print(format_summary(summary, settings.data_dir), file=out)
    return EXIT_LOSS if summary.lost_anything else EXIT_OK
