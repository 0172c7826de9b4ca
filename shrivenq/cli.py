"""The ``shrivenq`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="shrivenq: market-data capture for Zerodha Kite and Binance.",
    no_args_is_help=True,
    add_completion=False,
)


def _not_built(group: str, issue: int) -> typer.Typer:
    sub = typer.Typer(help=f"(not built yet: issue #{issue})", add_completion=False)

    @sub.callback(invoke_without_command=True, context_settings={
        "allow_extra_args": True, "ignore_unknown_options": True})
    def _stub(ctx: typer.Context) -> None:
        typer.echo(f"shrivenq {group}: not built yet (issue #{issue})", err=True)
        raise typer.Exit(2)

    return sub


app.add_typer(_not_built("capture", 4), name="capture")
app.add_typer(_not_built("instruments", 4), name="instruments")
app.add_typer(_not_built("auth", 4), name="auth")
app.add_typer(_not_built("sim", 4), name="sim")
app.add_typer(_not_built("replay", 5), name="replay")


wal_app = typer.Typer(help="The write-ahead log: inspect and verify what was captured.",
                      no_args_is_help=True, add_completion=False)
app.add_typer(wal_app, name="wal")


def _fail(command: str, err: Exception) -> None:
    typer.echo(f"shrivenq wal {command}: {err}", err=True)
    raise typer.Exit(2)


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
    """Segments, time ranges, counts, sizes, compression ratio and instruments."""
    from shrivenq.errors import ShrivenqError
    from shrivenq.wal import inspect
    try:
        summaries = inspect(directory)
    except ShrivenqError as err:
        _fail("inspect", err)
    if not summaries:
        typer.echo(f"{directory}: no WAL segments")
        return
    totals: dict[tuple[str, str], list] = {}
    for s in summaries:
        state = s.state + (" (live)" if s.live else "")
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
    for (venue, stream), (n, recs, payload, stored, size, inst) in sorted(totals.items()):
        ratio = payload / stored if stored else 0.0
        typer.echo(f"{venue}/{stream}: {n} segments, {recs:,} records, {payload:,} B received, "
                   f"{size:,} B on disk, ratio {ratio:.1f}x, {len(inst)} instruments")
        busiest = sorted(inst.items(), key=lambda kv: -kv[1])[:top]
        if busiest:
            typer.echo("  busiest: " + ", ".join(f"{k} ({c:,})" for k, c in busiest))


@wal_app.command("verify")
def wal_verify(directory: str = typer.Argument("data", help="a data root, venue, day or stream "
                                                             "directory, or one segment file"),
               repair: bool = typer.Option(False, "--repair", help="cut torn tails and rebuild "
                                           "missing footers first (what a writer does after a "
                                           "crash); other damage is never modified")) -> None:
    """Check every checksum and decode every record. Exit 0 only if the log is clean."""
    from shrivenq.errors import ShrivenqError
    from shrivenq.wal import verify
    try:
        report = verify(directory, repair=repair)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
