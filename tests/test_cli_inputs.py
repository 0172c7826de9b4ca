"""Hostile command-line input: every bad argument, file or environment value is one clear
line on stderr naming what and where, exit code 1, no traceback, no secret, nothing written."""

from __future__ import annotations

import os
import socket

import pytest
import typer
from typer.testing import CliRunner

from shrivenq.cli import app
from shrivenq.sim.kite_server import (
    DEMO_API_KEY, DEMO_API_SECRET, DEMO_REQUEST_TOKEN, SimThread,
)

KITE_VARS = ("KITE_API_KEY", "KITE_API_SECRET", "KITE_ACCESS_TOKEN")


def cli(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)


def refused(result, *words) -> None:
    """Exit 1, one line naming every word in ``words``, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    for w in words:
        assert w in result.output, (w, result.output)


@pytest.fixture
def no_kite_env(monkeypatch):
    for var in KITE_VARS:
        monkeypatch.delenv(var, raising=False)


def _write_0600(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.close(fd)


# 1 ---------------------------------------------------------------------------------------------

def test_busy_metrics_port_is_an_error_before_anything_is_written(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("capture", "run", "--sim", "--symbols", "NIFTY 50", "--duration", "2",
                "--metrics-port", port, "--data-dir", tmp_path, "--quiet")
    refused(r, f"--metrics-port {port}: address already in use")
    assert not list(tmp_path.rglob("*.wal"))


# 2 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option,value", [
    ("--sim-rate", "-1"),
    ("--sim-rate", "nan"),
    ("--sim-rate", "inf"),
    ("--duration", "nan"),          # given after --duration 1: the last one wins
    ("--snapshot-interval", "nan"),
    ("--snapshot-interval", "inf"),
    ("--watchdog", "nan"),
    ("--watchdog", "inf"),
])
def test_capture_refuses_negative_nan_and_infinite_numbers(tmp_path, option, value):
    r = cli("capture", "run", "--sim", "--symbols", "NIFTY 50", "--duration", "1", "--quiet",
            "--data-dir", tmp_path, option, value)
    refused(r, option, value)
    assert not list(tmp_path.rglob("*.wal"))


# 3 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", ["0", "-5"])
def test_instruments_search_refuses_a_limit_below_one(limit):
    refused(cli("instruments", "search", "infy", "--sample", "--limit", limit),
            "--limit", limit)


# 4 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["random-bytes-cache", "naive-expiry-cache", "non-utf8-env",
                                  "non-utf8-env-login"])
def test_unreadable_token_cache_and_env_file(tmp_path, no_kite_env, case):
    cache = tmp_path / "cache"
    cache.mkdir()
    envf = tmp_path / ".env"
    secret = "topsecretvalue0123456789"
    command = ["auth", "status"]
    if case == "random-bytes-cache":
        _write_0600(cache / "kite_token.json", b"\xff\xfe\x00\x81" + os.urandom(200))
        named = str(cache / "kite_token.json")
    elif case == "naive-expiry-cache":
        _write_0600(cache / "kite_token.json", (
            '{"api_key": "k", "access_token": "%s", "issued_at": "2099-12-01T06:00:00+05:30", '
            '"expires_at": "2099-12-02T06:00:00"}' % secret).encode())
        named = str(cache / "kite_token.json")
    else:
        envf.write_bytes(b"KITE_API_KEY=abcd1234\nKITE_API_SECRET=" + secret.encode()
                         + b"\xff\xfe\n")
        named = str(envf)
        if case == "non-utf8-env-login":
            command = ["auth", "login", "--request-token", "x"]
    r = cli(*command, "--cache-dir", cache, "--env-file", envf)
    refused(r, named)
    assert secret not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    if "cache" in case:
        assert "shrivenq auth login" in r.output and "not usable" in r.output
    else:
        assert "UTF-8" in r.output


# 5 ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_serving(monkeypatch):
    """The simulators' serve loops replaced by a stub that returns at once: an argument that
    should have been refused then shows up as exit 0 instead of a server that never stops."""
    from shrivenq.sim import binance_server, kite_server

    served = []

    async def serve(*args, **kwargs):
        served.append((args, kwargs))

    monkeypatch.setattr(kite_server, "run", serve)
    monkeypatch.setattr(binance_server, "serve_forever", serve)
    return served


@pytest.mark.parametrize("args,words", [
    (["sim", "kite", "--port", "-1"], "--port -1"),
    (["sim", "kite", "--port", "70000"], "--port 70000"),
    (["sim", "kite", "--port", "65535"], "--rest-port"),       # the default REST port: 65536
    (["sim", "kite", "--port", "0", "--rest-port", "70000"], "--rest-port 70000"),
    (["sim", "binance", "--port", "-1"], "--port -1"),
    (["sim", "binance", "--port", "70000"], "--port 70000"),
    (["sim", "binance", "--port", "0", "--rest-port", "-2"], "--rest-port -2"),
    (["capture", "run", "--sim", "--symbols", "NIFTY 50", "--metrics-port", "99999"],
     "--metrics-port 99999"),
    (["capture", "run", "--sim", "--symbols", "NIFTY 50", "--metrics-port", "-1"],
     "--metrics-port -1"),
])
def test_ports_must_be_0_to_65535(tmp_path, no_serving, args, words):
    r = cli(*args, *(["--data-dir", tmp_path, "--duration", "1"] if args[0] == "capture"
                     else []))
    refused(r, words, "0-65535")
    assert not no_serving
    assert not list(tmp_path.rglob("*.wal"))


# 6 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["sim", "kite", "--rate", "nan"],
                                  ["sim", "kite", "--rate", "inf"],
                                  ["sim", "binance", "--interval", "nan"],
                                  ["sim", "binance", "--interval", "inf"]])
def test_simulators_refuse_nan_and_infinite_rates(no_serving, args):
    refused(cli(*args), args[-2], args[-1])
    assert not no_serving


# 7 ---------------------------------------------------------------------------------------------

@pytest.fixture
def binance_settings(monkeypatch):
    """run_binance_capture replaced by a stub that keeps the settings it was given."""
    from shrivenq.capture import binance

    got = []

    def run(settings, *, sim=False, sim_interval=0.1, out=None, status=False):
        got.append(settings)
        return 0

    monkeypatch.setattr(binance, "run_binance_capture", run)
    return got


@pytest.mark.parametrize("args,words", [
    (["--exchange", "binance", "--snapshot-interval", "5"], "--snapshot-interval is for Kite"),
    (["--exchange", "binance", "--sim-rate", "2"], "--sim-rate is for Kite"),
    (["--exchange", "binance", "--cache-dir", "somewhere"], "--cache-dir is for Kite"),
    (["--exchange", "binance", "--mode", "full"], "--mode is for Kite"),
    (["--exchange", "binance", "--snapshot-limit", "0"], "--snapshot-limit 0"),
    (["--exchange", "binance", "--market", "usdm", "--snapshot-limit", "7"],
     "--snapshot-limit 7"),
    (["--snapshot-limit", "100"], "--snapshot-limit is for Binance"),
    (["--market", "usdm"], "--market is for Binance"),
])
def test_binance_and_kite_options_are_refused_not_ignored(tmp_path, binance_settings, args,
                                                          words):
    symbols = "BTCUSDT" if "binance" in args else "NIFTY 50"
    r = cli("capture", "run", "--sim", "--symbols", symbols, "--duration", "1", "--quiet",
            "--data-dir", tmp_path, *args)
    refused(r, words)
    assert not binance_settings
    assert not list(tmp_path.rglob("*.wal"))


def test_binance_snapshot_limit_reaches_the_capture_and_until_help_says_utc(tmp_path,
                                                                           binance_settings):
    r = cli("capture", "run", "--exchange", "binance", "--sim", "--symbols", "BTCUSDT",
            "--duration", "1", "--data-dir", tmp_path, "--snapshot-limit", "100", "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("capture", "run", "--exchange", "binance", "--market", "usdm", "--sim",
            "--symbols", "BTCUSDT", "--duration", "1", "--data-dir", tmp_path, "--quiet")
    assert r.exit_code == 0, r.output
    assert [s.snapshot_limit for s in binance_settings] == [100, 1000]
    run = typer.main.get_command(app).commands["capture"].commands["run"]
    until = next(p for p in run.params if p.name == "until")
    assert "IST for Kite, UTC for Binance" in until.help


# 8 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["", "sub"])
def test_login_cache_dir_that_is_a_file(tmp_path, no_kite_env, monkeypatch, sub):
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    monkeypatch.setenv("KITE_API_KEY", DEMO_API_KEY)
    monkeypatch.setenv("KITE_API_SECRET", DEMO_API_SECRET)
    with SimThread() as sim:
        r = cli("auth", "login", "--request-token", DEMO_REQUEST_TOKEN,
                "--cache-dir", afile / sub if sub else afile,
                "--env-file", tmp_path / "none.env", "--api-root", sim.rest_url)
    refused(r, str(afile), "not a directory")
    if sub:
        assert f"{afile} is a file" in r.output
    assert "File exists" not in r.output and DEMO_API_SECRET not in r.output
    assert afile.read_text() == "not a directory\n"


# 9 ---------------------------------------------------------------------------------------------

def test_sync_with_a_refused_env_access_token_blames_the_variable(tmp_path, no_kite_env,
                                                                  monkeypatch):
    bad = "refused-access-token-0123456789"
    monkeypatch.setenv("KITE_API_KEY", DEMO_API_KEY)
    monkeypatch.setenv("KITE_ACCESS_TOKEN", bad)
    with SimThread() as sim:
        r = cli("instruments", "sync", "--cache-dir", tmp_path, "--env-file",
                tmp_path / "none.env", "--api-root", sim.rest_url)
    refused(r, "KITE_ACCESS_TOKEN", "refused")
    assert "auth login" not in r.output and bad not in r.output
    assert not list(tmp_path.glob("kite_instruments_*.csv"))
