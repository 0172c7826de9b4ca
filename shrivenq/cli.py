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


def _register_wal() -> None:
    try:
        from shrivenq.wal.cli import wal_app
    except ImportError:
        app.add_typer(_not_built("wal", 3), name="wal")
    else:
        app.add_typer(wal_app, name="wal")


_register_wal()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
