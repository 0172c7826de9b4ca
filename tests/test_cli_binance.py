"""Binance through the command line: capture from the simulator, then replay what was
recorded; options that are Kite's, or not built for Binance yet, are refused clearly."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from shrivenq.cli import app


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_capture_then_replay_rebuilds_synced_books(tmp_path):
    result = cli("capture", "run", "--exchange", "binance", "--sim", "--symbols",
                 "BTCUSDT,ETHUSDT", "--duration", "2", "--data-dir", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    assert "2 books in sync at the end" in result.output and "no gaps" in result.output
    replay = cli("replay", "--exchange", "binance", "--data-dir", tmp_path)
    assert replay.exit_code == 0, replay.output
    assert "no end record" not in replay.output          # the session closed cleanly
    rows = [line.split() for line in replay.output.splitlines()
            if line.startswith(("BTCUSDT", "ETHUSDT"))]
    assert [r[0] for r in rows] == ["BTCUSDT", "ETHUSDT"] and all(r[1] == "yes" for r in rows)
    assert all(float(r[4]) < float(r[5]) for r in rows)   # best bid below best ask
    typo = cli("replay", "--exchange", "binance", "--data-dir", tmp_path, "--symbols", "BTCUSTD")
    assert typo.exit_code == 1 and "BTCUSTD" in typo.output and "closest: BTCUSDT" in typo.output


@pytest.mark.parametrize("args,words", [
    (["capture", "run", "--exchange", "binance", "--sim", "--symbols", "BTCUSDT", "--tokens", "5"],
     "--tokens is for Kite"),
    (["capture", "run", "--exchange", "binance", "--sim"], "give --symbols"),
    (["capture", "run", "--exchange", "bitmex", "--symbols", "XBTUSD"], "not one of kite, binance"),
    (["replay", "--exchange", "binance", "--verify"], "--verify: not available for Binance"),
    (["replay", "--exchange", "binance", "--market", "coinm"], "not one of spot, usdm"),
])
def test_refusals_name_the_option(tmp_path, args, words):
    result = cli(*args, "--data-dir", tmp_path)
    assert result.exit_code == 1 and words in result.output, result.output
    assert not list(tmp_path.rglob("*.wal"))
