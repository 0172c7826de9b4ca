"""Kite Connect credentials and the daily access token.

- ``load_credentials()``: ``KITE_API_KEY``, ``KITE_API_SECRET`` and ``KITE_ACCESS_TOKEN`` from
  the environment, falling back to a ``.env`` file (``KEY=value`` lines; the environment
  wins).
- ``login(...)``: exchanges the ``request_token`` from Kite's login redirect for an access
  token through kiteconnect's ``generate_session``, and caches it in
  ``cache/kite_token.json``: created with mode 0600 (never readable by others, not even
  for an instant), replaced atomically.
- A Kite access token lives until the next 06:00 IST (Kite flushes sessions every morning);
  ``token_expiry`` computes that instant and ``status`` says whether a usable token exists
  (``KITE_ACCESS_TOKEN`` in the environment overrides the cache; its expiry is unknown).
- ``access_token(...)``: the token capture should use, or ``AuthError`` saying what to do.

Secrets never appear in a log line or an error message: the API secret and access tokens
are never formatted anywhere, and an API key shows at most its last 4 characters
(``mask``). Anything that could echo a secret (an exception from the SDK) goes through
``scrub`` first.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

from shrivenq.errors import AuthError, ConfigError, ExchangeError

log = logging.getLogger("shrivenq.kite.auth")

IST = timezone(timedelta(hours=5, minutes=30), "IST")
#: Kite invalidates every access token at this IST wall-clock time each day.
EXPIRY_TIME_IST = time(6, 0)

ENV_API_KEY = "KITE_API_KEY"
ENV_API_SECRET = "KITE_API_SECRET"
ENV_ACCESS_TOKEN = "KITE_ACCESS_TOKEN"
ENV_VARS = (ENV_API_KEY, ENV_API_SECRET, ENV_ACCESS_TOKEN)

TOKEN_FILE = "kite_token.json"
DEFAULT_CACHE_DIR = Path("cache")
DEFAULT_ENV_FILE = Path(".env")


# --- redaction ------------------------------------------------------------------------------

def mask(value: str | None, keep: int = 4) -> str:
    """``****abcd``: at most the last ``keep`` characters, never more than a quarter of the
    value (so a short value shows nothing). For API keys only; secrets get ``"***"``."""
    if not value:
        return "<unset>"
    shown = min(keep, len(value) // 4)
    return "****" + (value[-shown:] if shown else "")


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``."""
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "***")
    return text


# --- credentials ----------------------------------------------------------------------------

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """``KEY=value`` lines of a ``.env`` file: ``#`` comments, blank lines, an optional
    ``export``, single or double quotes around the value, and ``# comment`` after an
    unquoted value. A missing file is an empty dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        # Say where, never what: the bytes may be a secret.
        raise ConfigError(f"{path}: not a .env file: not UTF-8 text (bad byte at offset "
                          f"{exc.start})") from None
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if not m:
            # The line may hold a secret: say where, never what.
            raise ConfigError(f"{path}:{lineno}: not a KEY=value line")
        key, value = m.group(1), m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        out[key] = value
    return out


@dataclass(frozen=True)
class Credentials:
    """Kite Connect app credentials. ``repr`` never shows the secret or the token."""

    api_key: str
    api_secret: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)   # an explicit override

    def __repr__(self) -> str:
        return (f"Credentials(api_key={mask(self.api_key)}, api_secret="
                f"{'***' if self.api_secret else '<unset>'}, access_token="
                f"{'***' if self.access_token else '<unset>'})")

    __str__ = __repr__

    def require_secret(self) -> str:
        if not self.api_secret:
            raise AuthError(f"{ENV_API_SECRET} is not set (environment or .env); "
                            "see .env.example")
        return self.api_secret


def load_credentials(environ: Mapping[str, str] | None = None,
                     env_file: str | os.PathLike | None = DEFAULT_ENV_FILE) -> Credentials:
    """Credentials from ``environ`` (default ``os.environ``) and ``env_file``; the
    environment wins, empty values count as unset. ``AuthError`` without an API key."""
    environ = os.environ if environ is None else environ
    file_vals = read_env_file(env_file) if env_file is not None else {}

    def get(name: str) -> str | None:
        value = environ.get(name) or file_vals.get(name) or ""
        return value.strip() or None

    api_key = get(ENV_API_KEY)
    if not api_key:
        where = f"the environment or {env_file}" if env_file is not None else "the environment"
        raise AuthError(f"{ENV_API_KEY} is not set in {where}; see .env.example")
    return Credentials(api_key, get(ENV_API_SECRET), get(ENV_ACCESS_TOKEN))


# --- expiry and the token cache -------------------------------------------------------------

def token_expiry(issued_at: datetime) -> datetime:
    """The first 06:00 IST strictly after ``issued_at``: the next morning for a token
    obtained during the day, the same morning for one obtained between midnight and 6."""
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    local = issued_at.astimezone(IST)
    expiry = datetime.combine(local.date(), EXPIRY_TIME_IST, IST)
    if expiry <= local:
        expiry += timedelta(days=1)
    return expiry


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CachedToken:
    api_key: str
    access_token: str = field(repr=False)
    issued_at: datetime
    expires_at: datetime
    user_id: str = ""

    def __repr__(self) -> str:
        return (f"CachedToken(api_key={mask(self.api_key)}, access_token=***, "
                f"issued_at={self.issued_at.isoformat()}, "
                f"expires_at={self.expires_at.isoformat()}, user_id={self.user_id!r})")

    def is_valid(self, now: datetime | None = None) -> bool:
        return (now or _now()) < self.expires_at

    def to_json(self) -> str:
        return json.dumps({
            "api_key": self.api_key, "access_token": self.access_token,
            "issued_at": self.issued_at.isoformat(), "expires_at": self.expires_at.isoformat(),
            "user_id": self.user_id,
        }, indent=1) + "\n"


def token_path(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    return Path(cache_dir) / TOKEN_FILE


def check_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """``ConfigError`` if ``cache_dir`` exists but is not a directory (checked before a login
    spends its single-use request token)."""
    path = Path(cache_dir)
    for p in (path, *path.parents):       # the nearest one that exists must be a directory
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{path}: the cache dir is not a directory"
                                  + (f" ({p} is a file)" if p != path else "")
                                  + "; cannot write the token cache there")
            break
    return path


def save_token(cache_dir: str | os.PathLike, token: CachedToken) -> Path:
    """Write the token file with mode 0600 from its creation, then rename it into place."""
    path = token_path(cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        # a file where the cache dir (or one of its parents) should be
        raise ConfigError(f"{path.parent}: the cache dir is not a directory; cannot write "
                          "the token cache there") from None
    except OSError as exc:
        raise ConfigError(f"{path.parent}: cannot create the cache dir: {exc.strerror}"
                          ) from None
    try:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask did, exactly 0600
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fd = -1
                fh.write(token.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the token cache: {exc.strerror}") from None
    return path


def load_token(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> CachedToken | None:
    """The cached token (valid or not), or None if there is no cache file. A file that
    others can read is refused: it would mean the token has leaked."""
    path = token_path(cache_dir)
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token cache: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise AuthError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); "
                        "delete it and run `shrivenq auth login`")
    # Whatever is wrong with the file, say what and where, never its contents (a token).
    try:
        doc = json.loads(raw.decode("utf-8"))
        token = CachedToken(
            api_key=str(doc["api_key"]), access_token=str(doc["access_token"]),
            issued_at=datetime.fromisoformat(doc["issued_at"]),
            expires_at=datetime.fromisoformat(doc["expires_at"]),
            user_id=str(doc.get("user_id") or ""),
        )
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a shrivenq token cache (not UTF-8 text); delete it "
                          "and run `shrivenq auth login`") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path}: not a shrivenq token cache; delete it and run "
                          "`shrivenq auth login`") from None
    for name in ("issued_at", "expires_at"):
        if getattr(token, name).tzinfo is None:
            raise ConfigError(f"{path}: not a shrivenq token cache ({name} has no time zone); "
                              "delete it and run `shrivenq auth login`")
    return token


def clear_token(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> bool:
    try:
        token_path(cache_dir).unlink()
        return True
    except FileNotFoundError:
        return False


# --- login ------------------------------------------------------------------------------------

def login_url(api_key: str) -> str:
    """Kite's login page for this app; after login Kite redirects to the app's registered
    URL with ``?request_token=...&action=login&status=success``."""
    from kiteconnect import KiteConnect

    return KiteConnect(api_key).login_url()


def extract_request_token(text: str) -> str:
    """The request token from what the user pasted: the token itself or the whole redirect
    URL (``...?request_token=XYZ&action=login&status=success``)."""
    text = text.strip()
    if "request_token=" in text:
        query = urlsplit(text).query or text.split("?", 1)[-1]
        values = parse_qs(query).get("request_token")
        if values and values[0].strip():
            return values[0].strip()
        raise ConfigError("the pasted URL has an empty request_token")
    if not text or not re.fullmatch(r"[A-Za-z0-9_\-]+", text):
        raise ConfigError("a request token is letters, digits, '-' and '_' (or paste the "
                          "whole redirect URL)")
    return text


def login(creds: Credentials, request_token: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
          root: str | None = None, now: datetime | None = None) -> CachedToken:
    """``generate_session`` through kiteconnect, then cache the access token (mode 0600)."""
    from kiteconnect import KiteConnect
    from kiteconnect import exceptions as kex

    secret = creds.require_secret()
    request_token = extract_request_token(request_token)
    check_cache_dir(cache_dir)
    kite = KiteConnect(creds.api_key, root=root)
    where = root or KiteConnect._default_root_uri
    try:
        session = kite.generate_session(request_token, api_secret=secret)
    except kex.TokenException as exc:
        msg = scrub(str(exc), secret, request_token, creds.api_key)
        raise AuthError(f"Kite refused the login at {where} (HTTP {exc.code}): {msg} — get a "
                        f"fresh request token (they are single-use and short-lived) and check "
                        f"{ENV_API_SECRET} for API key {mask(creds.api_key)}") from None
    except kex.KiteException as exc:
        msg = scrub(str(exc), secret, request_token, creds.api_key)
        raise ExchangeError(f"Kite login at {where} failed ({type(exc).__name__}, HTTP "
                            f"{exc.code}): {msg}") from None
    except Exception as exc:
        raise ExchangeError(f"Kite login at {where} failed: {type(exc).__name__}") from None
    access = session.get("access_token") if isinstance(session, dict) else None
    if not access:
        raise ExchangeError(f"Kite login at {where} returned no access token")
    issued = now or _now()
    token = CachedToken(api_key=creds.api_key, access_token=str(access), issued_at=issued,
                        expires_at=token_expiry(issued), user_id=str(session.get("user_id") or ""))
    path = save_token(cache_dir, token)
    log.info("Kite login ok for user %s (API key %s); token cached at %s until %s",
             token.user_id or "?", mask(creds.api_key), path,
             token.expires_at.isoformat(timespec="minutes"))
    return token


# --- status and the token to use ---------------------------------------------------------------

@dataclass(frozen=True)
class AuthStatus:
    usable: bool
    source: str                 # "env", "cache" or "none"
    message: str                # one line for a human; never a secret
    api_key: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    user_id: str = ""

    def __repr__(self) -> str:
        return (f"AuthStatus(usable={self.usable}, source={self.source!r}, "
                f"api_key={mask(self.api_key)}, expires_at={self.expires_at}, "
                f"message={self.message!r})")


def status(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, creds: Credentials | None = None,
           now: datetime | None = None) -> AuthStatus:
    """Whether a usable access token exists, without contacting Kite. ``creds`` (if given)
    supplies the override token and the API key the cached token must belong to."""
    now = now or _now()
    key = creds.api_key if creds else None
    if creds is not None and creds.access_token:
        return AuthStatus(True, "env", f"{ENV_ACCESS_TOKEN} is set (API key {mask(key)}); "
                          "its expiry is unknown", api_key=key)
    try:
        token = load_token(cache_dir)
    except (AuthError, ConfigError) as exc:   # unreadable or not a token cache: no token
        return AuthStatus(False, "cache", str(exc), api_key=key)
    path = token_path(cache_dir)
    if token is None:
        return AuthStatus(False, "none", f"no access token: {path} does not exist; run "
                          "`shrivenq auth login`", api_key=key)
    if key is not None and token.api_key != key:
        return AuthStatus(False, "cache", f"{path} holds a token for API key "
                          f"{mask(token.api_key)}, not {mask(key)}; run `shrivenq auth login`",
                          api_key=token.api_key, expires_at=token.expires_at)
    when = token.expires_at.astimezone(IST).strftime("%Y-%m-%d %H:%M IST")
    if not token.is_valid(now):
        return AuthStatus(False, "cache", f"the cached token expired at {when}; run "
                          "`shrivenq auth login`", api_key=token.api_key,
                          expires_at=token.expires_at, user_id=token.user_id)
    left = token.expires_at - now
    hours, rest = divmod(int(left.total_seconds()), 3600)
    return AuthStatus(True, "cache", f"token for user {token.user_id or '?'} (API key "
                      f"{mask(token.api_key)}) valid until {when} ({hours}h{rest // 60:02d}m "
                      "left)", api_key=token.api_key, expires_at=token.expires_at,
                      user_id=token.user_id)


def access_token(creds: Credentials, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                 now: datetime | None = None) -> str:
    """The access token to connect with: ``KITE_ACCESS_TOKEN`` if set, else a valid cached
    token for this API key, else ``AuthError`` saying why and what to run."""
    st = status(cache_dir, creds, now)
    if not st.usable:
        raise AuthError(st.message)
    if creds.access_token:
        return creds.access_token
    token = load_token(cache_dir)
    assert token is not None
    return token.access_token
