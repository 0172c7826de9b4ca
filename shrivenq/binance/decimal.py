"""Exact decimal strings to fixed-point integers, and back. No float ever touches a value.

Binance sends every price and quantity as a decimal string ("64201.01000000",
"0.00000000", and, in principle, "1E-8"). ``parse_fixed(text, scale)`` returns the integer
``value * 10**scale`` exactly, or raises ``BinanceMessageError`` saying why it cannot:

- the text is not a plain decimal (sign, spaces, "nan", "inf", "1_000", hex, empty ...);
- it has more significant decimal places than ``scale`` ("0.015" at scale 2): a fixed-point
  book would have to round, and a rounded book is a wrong book;
- it does not fit an int64 at that scale, or is negative.

Trailing zeros beyond the scale are fine ("0.01000000" at scale 2 is 1). ``scale_of(step)``
gives the scale a tick or step size needs: "0.01000000" -> 2, "1.00000000" -> 0, "1E-8" -> 8.
"""

from __future__ import annotations

import re

from shrivenq.errors import BinanceMessageError

INT64_MAX = (1 << 63) - 1
MAX_TEXT = 64          # longer "decimals" are refused before any arithmetic
MAX_SCALE = 18

_DECIMAL = re.compile(r"(?:([0-9]+)(?:\.([0-9]*))?|\.([0-9]+))(?:[eE]([+-]?[0-9]{1,4}))?")


def _split(text, where: str) -> tuple[int, int]:
    """(digits as int, exponent): the value is digits * 10**exponent."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise BinanceMessageError(where, f"decimal {bytes(text)[:MAX_TEXT]!r} is not ASCII") from None
    elif not isinstance(text, str):
        raise BinanceMessageError(where, f"expected a decimal string, got {type(text).__name__} "
                                         f"{text!r:.40}")
    if len(text) > MAX_TEXT:
        raise BinanceMessageError(where, f"decimal {text[:20]!r}... is {len(text)} characters long")
    m = _DECIMAL.fullmatch(text)
    if m is None:
        raise BinanceMessageError(where, f"{text!r} is not a decimal number")
    whole, frac, only_frac, exp = m.groups()
    if only_frac is not None:
        whole, frac = "0", only_frac
    frac = frac or ""
    exponent = (int(exp) if exp else 0) - len(frac)
    return int(whole + frac), exponent


def parse_fixed(text, scale: int, where: str = "decimal") -> int:
    """``text`` * 10**``scale`` as an exact int64 (see the module docstring)."""
    digits, exponent = _split(text, where)
    shift = exponent + scale
    if digits == 0:
        return 0
    if shift >= 0:
        if digits and shift > 19:
            raise BinanceMessageError(where, f"{text!r} does not fit an int64 at scale {scale}")
        value = digits * 10 ** shift
    else:
        div = 10 ** -shift if -shift <= 80 else 0
        if div == 0 or digits % div:
            raise BinanceMessageError(
                where, f"{text!r} has more decimal places than scale {scale} can represent")
        else:
            value = digits // div
    if value > INT64_MAX:
        raise BinanceMessageError(where, f"{text!r} does not fit an int64 at scale {scale}")
    return value


def scale_of(step, where: str = "step size") -> int:
    """Decimal places needed to represent ``step`` (and every multiple of it) exactly."""
    digits, exponent = _split(step, where)
    if digits == 0:
        raise BinanceMessageError(where, f"{step!r} is zero")
    while digits % 10 == 0:
        digits //= 10
        exponent += 1
    scale = max(0, -exponent)
    if scale > MAX_SCALE:
        raise BinanceMessageError(where, f"{step!r} needs {scale} decimal places (at most {MAX_SCALE})")
    return scale


def format_fixed(value: int, scale: int, places: int | None = None) -> str:
    """The decimal string of ``value / 10**scale`` with ``places`` decimals (default ``scale``)."""
    places = scale if places is None else places
    if places < scale:
        raise ValueError("places must be >= scale")
    sign = "-" if value < 0 else ""
    value = abs(value) * 10 ** (places - scale)
    if places == 0:
        return f"{sign}{value}"
    q, r = divmod(value, 10 ** places)
    return f"{sign}{q}.{r:0{places}d}"
