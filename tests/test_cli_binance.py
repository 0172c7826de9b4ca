"""Binance through the command line: capture from the simulator, then replay what was
recorded; options that are Kite's, or not built for Binance yet, are refused clearly."""

from __future__ import annotations

import io

import pytest
from typer.testing import CliRunner

from shrivenq.cli import app
from shrivenq.replay.runner import ReplayRequest, run_replay


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
    # Progress, as the CLI draws it on a terminal: messages so far and how far in time.
    calls = []
    out = io.StringIO()
    code = run_replay(ReplayRequest(exchange="binance", data_dir=tmp_path), out=out,
                      progress=lambda *a: calls.append(a))
    assert code == 0 and out.getvalue() in replay.output
    counts = [c[0] for c in calls]
    times = [c[1] for c in calls]
    assert calls and counts == sorted(counts) and times == sorted(times)
    assert all(c[2] == calls[0][1] and c[3] is None for c in calls)   # from the first message


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
