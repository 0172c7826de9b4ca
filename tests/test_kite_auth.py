"""Kite credentials and the cached access token: .env parsing, the 0600 cache, the 06:00 IST
expiry, status, login against the simulator, and secrets that never leak."""

from __future__ import annotations

import logging
import os
import stat
from datetime import datetime, timezone

import pytest

from shrivenq.errors import AuthError, ConfigError, ShrivenqError
from shrivenq.kite import auth
from shrivenq.kite.auth import (
    IST, CachedToken, Credentials, access_token, extract_request_token, load_credentials,
    load_token, login, mask, read_env_file, save_token, scrub, status, token_expiry, token_path,
)
from shrivenq.sim.kite_server import (
    DEMO_ACCESS_TOKEN, DEMO_API_KEY, DEMO_API_SECRET, DEMO_REQUEST_TOKEN, SimThread,
)

SECRET = "s3cr3t-api-secret-value-xyz"
API_KEY = "abcdefgh12345678"
TOKEN = "accesstoken-0123456789abcdef"


def ist(y, mo, d, h, mi=0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=IST)


# --- credentials ------------------------------------------------------------------------------

def test_env_file_parser(tmp_path):
    env = tmp_path / ".env"
    env.write_text("# comment\n\nKITE_API_KEY=fromfile\nexport KITE_API_SECRET='quoted # not a "
                   "comment'\nKITE_ACCESS_TOKEN= tok # trailing comment\nEMPTY=\n")
    assert read_env_file(env) == {"KITE_API_KEY": "fromfile",
                                  "KITE_API_SECRET": "quoted # not a comment",
                                  "KITE_ACCESS_TOKEN": "tok", "EMPTY": ""}
    assert read_env_file(tmp_path / "missing") == {}
    env.write_text(f"KITE_API_KEY=x\nthis line holds {SECRET}\n")
    with pytest.raises(ConfigError) as info:
        read_env_file(env)
    assert ":2:" in str(info.value) and SECRET not in str(info.value)


def test_environment_wins_over_env_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text(f"KITE_API_KEY=filekey\nKITE_API_SECRET={SECRET}\n")
    creds = load_credentials({"KITE_API_KEY": API_KEY, "KITE_ACCESS_TOKEN": ""}, env)
    assert creds.api_key == API_KEY and creds.api_secret == SECRET
    assert creds.access_token is None
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    assert "5678" in repr(creds) and API_KEY not in repr(creds)
    with pytest.raises(AuthError, match="KITE_API_KEY is not set"):
        load_credentials({}, tmp_path / "none")
    with pytest.raises(AuthError, match="KITE_API_SECRET"):
        load_credentials({"KITE_API_KEY": API_KEY}, None).require_secret()


def test_mask_and_scrub():
    assert mask(API_KEY) == "****5678"
    assert mask("abc") == "****" and mask(None) == "<unset>" and mask("") == "<unset>"
    assert scrub(f"bad {SECRET} and {TOKEN}", SECRET, TOKEN, None) == "bad *** and ***"


# --- expiry and cache -------------------------------------------------------------------------

@pytest.mark.parametrize("issued, expires", [
    (ist(2025, 11, 20, 9, 5), ist(2025, 11, 21, 6)),      # a normal morning login
    (ist(2025, 11, 20, 23, 59), ist(2025, 11, 21, 6)),
    (ist(2025, 11, 20, 6, 0), ist(2025, 11, 21, 6)),      # exactly at the flush: next day
    (ist(2025, 11, 21, 2, 30), ist(2025, 11, 21, 6)),     # after midnight: this morning
    (ist(2025, 12, 31, 18), ist(2026, 1, 1, 6)),
])
def test_token_expires_at_the_next_0600_ist(issued, expires):
    assert token_expiry(issued) == expires
    # the same instant given in UTC
    assert token_expiry(issued.astimezone(timezone.utc)) == expires
    with pytest.raises(ValueError):
        token_expiry(issued.replace(tzinfo=None))


def _token(issued=None) -> CachedToken:
    issued = issued or ist(2025, 11, 20, 9)
    return CachedToken(API_KEY, TOKEN, issued, token_expiry(issued), "AB1234")


def test_token_cache_is_0600_from_creation(tmp_path, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(auth.os, "open", spy)
    old = os.umask(0)        # the most permissive umask: the mode must not rely on it
    try:
        path = save_token(tmp_path / "cache", _token())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path == token_path(tmp_path / "cache")
    assert opened and all(mode == 0o600 and flags & os.O_CREAT and flags & os.O_EXCL
                          for _, flags, mode in opened)
    assert load_token(tmp_path / "cache") == _token()
    assert not [p for p in path.parent.iterdir() if p.name != path.name]   # no temp left
    # overwriting keeps 0600
    save_token(tmp_path / "cache", _token(ist(2025, 11, 21, 9)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_world_readable_cache_is_refused(tmp_path):
    path = save_token(tmp_path, _token())
    os.chmod(path, 0o644)
    with pytest.raises(AuthError, match="readable by others"):
        load_token(tmp_path)
    st = status(tmp_path, now=ist(2025, 11, 20, 10))
    assert not st.usable and "readable by others" in st.message


def test_corrupt_cache(tmp_path):
    p = token_path(tmp_path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"{nope")
    os.close(fd)
    with pytest.raises(ConfigError, match="not a shrivenq token cache"):
        load_token(tmp_path)


def test_status(tmp_path):
    creds = Credentials(API_KEY, SECRET)
    st = status(tmp_path, creds, now=ist(2025, 11, 20, 10))
    assert not st.usable and st.source == "none" and "auth login" in st.message
    save_token(tmp_path, _token())
    st = status(tmp_path, creds, now=ist(2025, 11, 20, 10))
    assert st.usable and st.source == "cache" and st.expires_at == ist(2025, 11, 21, 6)
    assert "2025-11-21 06:00 IST" in st.message and "20h00m" in st.message
    assert access_token(creds, tmp_path, now=ist(2025, 11, 20, 10)) == TOKEN
    st = status(tmp_path, creds, now=ist(2025, 11, 21, 6))
    assert not st.usable and "expired" in st.message
    with pytest.raises(AuthError, match="expired"):
        access_token(creds, tmp_path, now=ist(2025, 11, 21, 6, 1))
    other = Credentials("zzzzzzzzzzzz9999", SECRET)
    st = status(tmp_path, other, now=ist(2025, 11, 20, 10))
    assert not st.usable and "****9999" in st.message
    env = Credentials(API_KEY, SECRET, access_token="override-token")
    st = status(tmp_path, env, now=ist(2025, 11, 22, 10))
    assert st.usable and st.source == "env"
    assert access_token(env, tmp_path) == "override-token"
    for s in (st, status(tmp_path, creds, now=ist(2025, 11, 20, 10))):
        text = s.message + repr(s)
        assert TOKEN not in text and "override-token" not in text and SECRET not in text
        assert API_KEY not in text


# --- login ------------------------------------------------------------------------------------

def test_extract_request_token():
    assert extract_request_token(" abc123 ") == "abc123"
    assert extract_request_token("https://example.com/cb?action=login&request_token=XyZ9"
                                 "&status=success") == "XyZ9"
    with pytest.raises(ConfigError):
        extract_request_token("has spaces in it")
    with pytest.raises(ConfigError):
        extract_request_token("https://example.com/cb?request_token=&status=success")


def test_login_against_the_simulator_caches_the_token(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    creds = Credentials(DEMO_API_KEY, DEMO_API_SECRET)
    now = ist(2025, 11, 20, 9, 20)
    with SimThread() as sim:
        url = auth.login_url(DEMO_API_KEY)
        assert url.startswith("https://kite.zerodha.com/connect/login?api_key=" + DEMO_API_KEY)
        tok = login(creds, f"https://my.app/cb?request_token={DEMO_REQUEST_TOKEN}&status=success",
                    tmp_path, root=sim.rest_url, now=now)
        assert tok.access_token == DEMO_ACCESS_TOKEN and tok.user_id == "SIM001"
        assert tok.expires_at == ist(2025, 11, 21, 6)
        assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600
        assert access_token(creds, tmp_path, now=now) == DEMO_ACCESS_TOKEN
        # a fresh single-use request token works once
        rt = sim.new_request_token()
        tok2 = login(creds, rt, tmp_path, root=sim.rest_url, now=now)
        assert tok2.access_token != DEMO_ACCESS_TOKEN
        assert load_token(tmp_path).access_token == tok2.access_token

        # refused logins: AuthError, and nothing secret in the message
        errors = []
        for c, req in ((creds, rt),                                         # reused
                       (Credentials(DEMO_API_KEY, "wrong-secret-0000"), DEMO_REQUEST_TOKEN)):
            with pytest.raises(AuthError) as info:
                login(c, req, tmp_path, root=sim.rest_url, now=now)
            errors.append(str(info.value))
        sim.reject_tokens = True
        with pytest.raises(AuthError) as info:
            login(creds, DEMO_REQUEST_TOKEN, tmp_path, root=sim.rest_url, now=now)
        errors.append(str(info.value))
    with pytest.raises(AuthError, match="KITE_API_SECRET"):
        login(Credentials(DEMO_API_KEY), DEMO_REQUEST_TOKEN, tmp_path, root="http://127.0.0.1:9")
    assert "checksum" in errors[1]
    secrets = (DEMO_API_SECRET, "wrong-secret-0000", DEMO_ACCESS_TOKEN, tok2.access_token, rt)
    everything = "\n".join(errors) + "\n" + caplog.text + "\n" + "\n".join(
        r.getMessage() for r in caplog.records)
    for s in secrets:
        assert s not in everything, s
    assert DEMO_API_KEY not in "\n".join(errors)
    assert any("login ok" in r.getMessage() for r in caplog.records)   # logs were captured


def test_unreachable_server_is_an_error_without_secrets(tmp_path):
    creds = Credentials(DEMO_API_KEY, SECRET)
    with pytest.raises(ShrivenqError) as info:
        login(creds, "reqtoken", tmp_path, root="http://127.0.0.1:9")     # nothing listens
    assert SECRET not in str(info.value) and "reqtoken" not in str(info.value)
    assert not token_path(tmp_path).exists()


# --- the CLI ----------------------------------------------------------------------------------

def test_cli_login_status_sync_search(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from shrivenq.cli import app

    runner = CliRunner()
    cache, envf = str(tmp_path / "cache"), str(tmp_path / ".env")
    for var in ("KITE_API_KEY", "KITE_API_SECRET", "KITE_ACCESS_TOKEN"):
        monkeypatch.delenv(var, raising=False)

    def cli(*args, **kw):
        return runner.invoke(app, list(args), **kw)

    r = cli("auth", "status", "--cache-dir", cache, "--env-file", envf)
    assert r.exit_code == 1 and "auth login" in r.output and "Traceback" not in r.output
    r = cli("auth", "login", "--request-token", "x", "--cache-dir", cache, "--env-file", envf)
    assert r.exit_code == 1 and "KITE_API_KEY is not set" in r.output
    assert len(r.output.strip().splitlines()) == 1

    (tmp_path / ".env").write_text(f"KITE_API_KEY={DEMO_API_KEY}\n"
                                   f"KITE_API_SECRET={DEMO_API_SECRET}\n")
    with SimThread() as sim:
        r = cli("auth", "login", "--cache-dir", cache, "--env-file", envf,
                "--api-root", sim.rest_url, input=DEMO_REQUEST_TOKEN + "\n")
        assert r.exit_code == 0, r.output
        assert "kite.zerodha.com/connect/login" in r.output and "mode 0600" in r.output
        r = cli("auth", "status", "--cache-dir", cache, "--env-file", envf)
        assert r.exit_code == 0 and r.output.startswith("usable")
        r = cli("instruments", "sync", "--cache-dir", cache, "--env-file", envf,
                "--api-root", sim.rest_url)
        assert r.exit_code == 0 and "downloaded 110 instruments" in r.output
        r = cli("auth", "login", "--request-token", "nope", "--cache-dir", cache,
                "--env-file", envf, "--api-root", sim.rest_url)
        assert r.exit_code == 1 and "refused" in r.output
    assert DEMO_API_SECRET not in r.output and DEMO_ACCESS_TOKEN not in r.output
    r = cli("instruments", "search", "NIFTY 50", "--cache-dir", cache)
    assert r.exit_code == 0 and "256265" in r.output
    r = cli("instruments", "search", "qqqqqqqqqq", "--sample")
    assert r.exit_code == 1
