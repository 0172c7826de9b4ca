"""Time arguments as users type them: '2026-11-20T09:15', '09:15', '15:30+05:30', '1s'."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone, tzinfo

import numpy as np

from shrivenq.errors import ConfigError

IST = timezone(timedelta(hours=5, minutes=30), "IST")
IST_OFFSET_NS = int(IST.utcoffset(None).total_seconds()) * 10**9
UTC = timezone.utc

_CLOCK = re.compile(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2}|Z)?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|min|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
            "min": 60 * 10**9, "h": 3600 * 10**9}


def parse_datetime(text: str, what: str, tz: tzinfo = IST, day: date | None = None) -> datetime:
    """An ISO date-time, or a clock time on ``day``; no zone means ``tz``."""
    text = text.strip()
    try:
        if _CLOCK.fullmatch(text):
            if day is None:
                raise ConfigError(f"{what} {text!r} needs a date, e.g. 2026-11-20T{text}")
            clock = time.fromisoformat(text)
            return datetime.combine(day, clock.replace(tzinfo=None), clock.tzinfo or tz)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a time like 2026-11-20T09:15 (IST unless a "
                          "zone is given)") from None
    return value if value.tzinfo else value.replace(tzinfo=tz)


def to_ns(value: datetime) -> int:
    return int(value.timestamp()) * 10**9 + value.microsecond * 1000


def parse_duration_ns(text, what: str) -> int:
    """'1s', '500ms', '5m' (or '5min'), '1h' -> nanoseconds (positive). A timedelta
    (datetime's, numpy's or pandas') and an integer count of nanoseconds are taken too."""
    if isinstance(text, timedelta):           # pandas' Timedelta is one; .value keeps its ns
        ns = int(getattr(text, "value", None) or (text // timedelta(microseconds=1)) * 1000)
    elif isinstance(text, np.timedelta64):    # before integers: numpy counts it as one
        ns = int(text.astype("timedelta64[ns]").astype(np.int64))
    elif isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        ns = int(text)
    elif isinstance(text, str):
        m = _DURATION.fullmatch(text.strip())
        if not m or float(m.group(1)) <= 0:
            raise ConfigError(f"{what} {text!r} is not a duration like 1s, 500ms or 5m")
        return int(float(m.group(1)) * _UNIT_NS[m.group(2)])
    else:
        raise ConfigError(f"{what} {text!r} is not a duration: give a string like '1s', "
                          "'500ms' or '5m', a timedelta, or an int of nanoseconds")
    if ns <= 0:
        raise ConfigError(f"{what} {text!r} is not a positive duration")
    return ns


def format_ns(ns: int | None, tz: tzinfo = IST) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def iso_ns(ns: int, tz: tzinfo = IST) -> str:
    """ISO 8601 with every nanosecond and the zone: '2026-11-20T09:15:00.123456789+05:30'
    (what pandas' read_csv and to_datetime read back exactly)."""
    secs, frac = divmod(int(ns), 10**9)
    stamp = datetime.fromtimestamp(secs, tz).isoformat()
    return f"{stamp[:19]}.{frac:09d}{stamp[19:]}"
