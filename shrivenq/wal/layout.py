"""Where segments live: ROOT/VENUE/YYYY-MM-DD/STREAM/NNNNNN.wal, and the trading day."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from shrivenq.errors import ConfigError, WalIOError

DAY_NS = 86_400 * 1_000_000_000
UTC = _dt.timezone.utc
IST = _dt.timezone(_dt.timedelta(hours=5, minutes=30), "IST")
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SEG_RE = re.compile(r"^(\d{6,})\.wal$")


def tz_offset_seconds(tz) -> int:
    """Seconds east of UTC of a fixed-offset timezone (``datetime.timezone``, "UTC", "IST",
    "+05:30"). Trading days of the venues shrivenq knows have fixed offsets."""
    if isinstance(tz, str):
        named = {"UTC": UTC, "Z": UTC, "IST": IST}
        if tz.upper() in named:
            tz = named[tz.upper()]
        else:
            m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", tz)
            if not m:
                raise ConfigError(f"timezone {tz!r}: use UTC, IST or an offset like +05:30")
            sign = 1 if m.group(1) == "+" else -1
            return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60)
    off = tz.utcoffset(None) if isinstance(tz, _dt.tzinfo) else None
    if off is None:
        raise ConfigError(f"timezone {tz!r} is not a fixed offset")
    return int(off.total_seconds())


def day_number(wall_ns: int, tz_offset_s: int) -> int:
    """Days since 1970-01-01 of the calendar day ``wall_ns`` falls in, at that offset."""
    return (wall_ns + tz_offset_s * 1_000_000_000) // DAY_NS


def day_name(day: int) -> str:
    return _dt.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def day_from_int(yyyymmdd: int) -> int:
    """Inverse of day_int: days since 1970-01-01 of a YYYYMMDD integer (ValueError if it is
    not a date)."""
    d = _dt.date(yyyymmdd // 10000, yyyymmdd // 100 % 100, yyyymmdd % 100)
    return d.toordinal() - _EPOCH_ORDINAL


def day_int(day: int) -> int:
    d = _dt.date.fromordinal(_EPOCH_ORDINAL + day)
    return d.year * 10000 + d.month * 100 + d.day


def segment_name(number: int) -> str:
    return f"{number:06d}.wal"


def stream_dir(root: Path, venue: str, day: int, stream: str) -> Path:
    return Path(root) / venue / day_name(day) / stream


def segments_in(directory: Path) -> list[Path]:
    """Segment files of one stream directory, by number."""
    out = []
    for p in directory.iterdir():
        m = _SEG_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return [p for _, p in sorted(out)]


def find_segments(path: Path | str, stream: str | None = None) -> list[Path]:
    """Every segment under ``path`` (a root, venue, day or stream directory, or one segment
    file), ordered by venue, stream, day and number. Raises WalIOError if ``path`` does not
    exist."""
    path = Path(path)
    if not path.exists():
        raise WalIOError(path, "no such file or directory")
    if path.is_file():
        return [path]
    found = []
    for p in path.rglob("*.wal"):
        m = _SEG_RE.match(p.name)
        if not m or not p.is_file():
            continue
        if stream is not None and p.parent.name != stream:
            continue
        day = p.parent.parent.name
        venue = p.parent.parent.parent.name if _DAY_RE.match(day) else ""
        found.append(((venue, p.parent.name, day, int(m.group(1))), p))
    return [p for _, p in sorted(found)]


def stream_key(seg: Path) -> tuple[str, str]:
    """(venue, stream) of a segment path laid out as ROOT/VENUE/DAY/STREAM/N.wal."""
    return seg.parent.parent.parent.name, seg.parent.name


def numbering_holes(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    """Segments missing from the numbering of their directories (each directory's segments
    are numbered from 1 without gaps as they are written), for ``paths`` as find_segments
    orders them: {the segment after a hole: (first missing number, how many)}."""
    holes = {}
    prev: tuple[Path, int] | None = None
    for p in paths:
        if not p.stem.isdigit():
            continue                 # a file named by hand: not numbered
        number = int(p.stem)
        expected = prev[1] + 1 if prev is not None and prev[0] == p.parent else 1
        if number > expected:
            holes[p] = (expected, number - expected)
        prev = (p.parent, number)
    return holes


def newest_in_dirs(paths: list[Path]) -> set[Path]:
    """The newest segment of each directory in ``paths`` (ordered as find_segments orders
    them): a writer closes each segment before it makes the next, so only these can be left
    unclosed by a crash."""
    return set({p.parent: p for p in paths}.values())


def describe_hole(after: Path, first: int, count: int) -> str:
    names = (segment_name(first) if count == 1
             else f"{segment_name(first)} to {segment_name(first + count - 1)}")
    return f"missing: {names} (before {after.name}) are not in {after.parent}"

