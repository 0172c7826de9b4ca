"""The Kite instrument master: what every instrument token means.

Kite publishes the full list of instruments once a day as a CSV (``GET /instruments``,
``KiteConnect.instruments()``). ``InstrumentMaster`` holds it with fast lookups:

- by instrument token (``by_token``, ``get``),
- by tradingsymbol or name, case-insensitive and exact (``by_symbol``; ``"NSE:INFY"`` picks
  the exchange),
- by underlying, expiry, strike and CE/PE (``derivatives``, ``option``, ``future``,
  ``expiries``),
- ``resolve(symbols)``: what capture uses to turn a user's list of symbols into tokens; an
  unknown symbol raises ``ConfigError`` naming the closest matches, before anything connects.

CSV text goes through kiteconnect's own ``KiteConnect._parse_instruments`` so a row here is
exactly what the SDK would give. ``sync`` downloads the master through the SDK and caches it
under ``cache/`` as ``kite_instruments_YYYY-MM-DD.csv`` (the IST trading day); a second call
the same day reads the cached file. ``InstrumentMaster.sample()`` loads the small master that
ships with the package (indices, NSE stocks, NIFTY/BANKNIFTY futures and option chains) for
the simulator and the tests.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from shrivenq.errors import AuthError, ConfigError, ExchangeError

log = logging.getLogger("shrivenq.kite.instruments")

IST = timezone(timedelta(hours=5, minutes=30), "IST")

#: Column order of Kite's instruments CSV.
CSV_COLUMNS = ("instrument_token", "exchange_token", "tradingsymbol", "name", "last_price",
               "expiry", "strike", "tick_size", "lot_size", "instrument_type", "segment",
               "exchange")

SAMPLE_RESOURCE = "data/kite_instruments_sample.csv"
CACHE_PREFIX = "kite_instruments_"

#: When a bare symbol exists on several exchanges, the first exchange here wins.
EXCHANGE_PREFERENCE = ("NSE", "NFO", "BSE", "BFO", "MCX", "CDS", "BCD", "NCO")

SEGMENT_INDICES = 9


@dataclass(frozen=True, slots=True)
class Instrument:
    """One row of Kite's instrument master, typed as kiteconnect types it."""

    instrument_token: int
    exchange_token: int
    tradingsymbol: str
    name: str
    last_price: float
    expiry: date | None
    strike: float
    tick_size: float
    lot_size: int
    instrument_type: str      # EQ, FUT, CE, PE (indices are EQ in segment INDICES)
    segment: str              # NSE, NFO-FUT, NFO-OPT, INDICES, BSE, ...
    exchange: str             # NSE, NFO, BSE, BFO, MCX, CDS, ...

    @property
    def token(self) -> int:
        return self.instrument_token

    @property
    def is_index(self) -> bool:
        return self.segment == "INDICES" or (self.instrument_token & 0xFF) == SEGMENT_INDICES

    @property
    def is_option(self) -> bool:
        return self.instrument_type in ("CE", "PE")

    @property
    def is_future(self) -> bool:
        return self.instrument_type == "FUT"

    @property
    def key(self) -> str:
        """``EXCHANGE:TRADINGSYMBOL``, the form Kite's REST quote APIs use."""
        return f"{self.exchange}:{self.tradingsymbol}"

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Instrument":
        """From one dict of ``KiteConnect.instruments()`` (or ``_parse_instruments``)."""
        expiry = rec.get("expiry")
        if isinstance(expiry, datetime):
            expiry = expiry.date()
        elif not isinstance(expiry, date):
            expiry = None
        return cls(
            instrument_token=int(rec["instrument_token"]),
            exchange_token=int(rec.get("exchange_token") or 0),
            tradingsymbol=str(rec["tradingsymbol"]),
            name=str(rec.get("name") or ""),
            last_price=float(rec.get("last_price") or 0.0),
            expiry=expiry,
            strike=float(rec.get("strike") or 0.0),
            tick_size=float(rec.get("tick_size") or 0.0),
            lot_size=int(rec.get("lot_size") or 0),
            instrument_type=str(rec.get("instrument_type") or ""),
            segment=str(rec.get("segment") or ""),
            exchange=str(rec.get("exchange") or ""),
        )

    def to_record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CSV_COLUMNS}


def parse_instruments_csv(data: bytes | str) -> list[dict[str, Any]]:
    """Kite's instruments CSV as the SDK parses it (``KiteConnect._parse_instruments``)."""
    from kiteconnect import KiteConnect

    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        return KiteConnect._parse_instruments(None, data)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"not a Kite instruments CSV: {type(exc).__name__}: {exc}") from None


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def records_to_csv(records: Iterable[dict[str, Any]]) -> str:
    """Records (as ``instruments()`` returns them) back into Kite's CSV layout."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rec in records:
        writer.writerow([_csv_value(rec.get(col)) for col in CSV_COLUMNS])
    return out.getvalue()


def sample_csv_bytes() -> bytes:
    """The instruments CSV that ships with the package."""
    return resources.files("shrivenq").joinpath(SAMPLE_RESOURCE).read_bytes()


def _norm(text: str) -> str:
    return " ".join(text.split()).upper()


def _strike_key(strike: float) -> int:
    return round(float(strike) * 100)


class InstrumentMaster:
    """An immutable set of instruments with lookups by token, symbol and contract terms."""

    def __init__(self, instruments: Iterable[Instrument]):
        self._rows: list[Instrument] = list(instruments)
        self._by_token: dict[int, Instrument] = {}
        self._by_symbol: dict[str, list[Instrument]] = defaultdict(list)
        self._by_name: dict[str, list[Instrument]] = defaultdict(list)
        self._by_underlying: dict[str, list[Instrument]] = defaultdict(list)
        self._by_contract: dict[tuple[str, date, int, str], Instrument] = {}
        for ins in self._rows:
            self._by_token[ins.instrument_token] = ins
            self._by_symbol[_norm(ins.tradingsymbol)].append(ins)
            if ins.name:
                self._by_name[_norm(ins.name)].append(ins)
            if ins.expiry is not None and ins.name:
                self._by_underlying[_norm(ins.name)].append(ins)
                right = ins.instrument_type if ins.is_option else "FUT"
                self._by_contract[(_norm(ins.name), ins.expiry, _strike_key(ins.strike),
                                   right)] = ins
        for rows in self._by_underlying.values():
            rows.sort(key=lambda i: (i.expiry, i.instrument_type != "FUT", i.strike,
                                     i.instrument_type))

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> "InstrumentMaster":
        return cls(Instrument.from_record(r) for r in records)

    @classmethod
    def from_csv(cls, data: bytes | str) -> "InstrumentMaster":
        """From the CSV text Kite's ``/instruments`` returns."""
        return cls.from_records(parse_instruments_csv(data))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InstrumentMaster":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read instruments file: {exc.strerror}") from None
        try:
            return cls.from_csv(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def sample(cls) -> "InstrumentMaster":
        """The small master shipped with the package (for the simulator and tests)."""
        return cls.from_csv(sample_csv_bytes())

    def to_csv(self) -> str:
        return records_to_csv(i.to_record() for i in self._rows)

    # --- container -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._rows)

    def __contains__(self, token: object) -> bool:
        return token in self._by_token

    @property
    def tokens(self) -> list[int]:
        return [i.instrument_token for i in self._rows]

    # --- lookups ---------------------------------------------------------------------------

    def get(self, token: int) -> Instrument | None:
        return self._by_token.get(int(token))

    def by_token(self, token: int) -> Instrument:
        ins = self._by_token.get(int(token))
        if ins is None:
            raise ConfigError(f"instrument token {token} is not in the instrument master")
        return ins

    def by_symbol(self, symbol: str, exchange: str | None = None) -> list[Instrument]:
        """Instruments whose tradingsymbol equals ``symbol`` (case-insensitive); failing
        that, whose name does. ``"NSE:INFY"`` is the same as ``symbol="INFY",
        exchange="NSE"``. Several rows come back when a symbol is listed on several
        exchanges or a name is shared (an underlying's name is on all its derivatives)."""
        if exchange is None and ":" in symbol:
            head, tail = symbol.split(":", 1)
            if head.strip().upper() in EXCHANGE_PREFERENCE or head.strip().isalpha():
                exchange, symbol = head, tail
        key = _norm(symbol)
        rows = self._by_symbol.get(key) or self._by_name.get(key) or []
        if exchange is not None:
            ex = exchange.strip().upper()
            rows = [r for r in rows if r.exchange == ex]
        return list(rows)

    def derivatives(self, underlying: str, expiry: date | None = None,
                    strike: float | None = None, instrument_type: str | None = None,
                    ) -> list[Instrument]:
        """Futures and options on ``underlying`` (the ``name`` column: "NIFTY",
        "BANKNIFTY", "RELIANCE"), optionally of one expiry, strike and type (FUT/CE/PE),
        ordered by expiry, futures first, then strike, CE before PE."""
        rows = self._by_underlying.get(_norm(underlying), [])
        if expiry is not None:
            rows = [r for r in rows if r.expiry == expiry]
        if strike is not None:
            sk = _strike_key(strike)
            rows = [r for r in rows if _strike_key(r.strike) == sk and r.is_option]
        if instrument_type is not None:
            rows = [r for r in rows if r.instrument_type == instrument_type.upper()]
        return list(rows)

    def expiries(self, underlying: str, instrument_type: str | None = None) -> list[date]:
        rows = self.derivatives(underlying, instrument_type=instrument_type)
        return sorted({r.expiry for r in rows if r.expiry is not None})

    def strikes(self, underlying: str, expiry: date) -> list[float]:
        rows = self.derivatives(underlying, expiry=expiry)
        return sorted({r.strike for r in rows if r.is_option})

    def option(self, underlying: str, expiry: date, strike: float, right: str) -> Instrument:
        """The CE or PE contract; ``ConfigError`` (listing the strikes that exist) if none."""
        right = right.upper()
        if right not in ("CE", "PE"):
            raise ConfigError(f"option right must be CE or PE, not {right!r}")
        ins = self._by_contract.get((_norm(underlying), expiry, _strike_key(strike), right))
        if ins is None:
            strikes = self.strikes(underlying, expiry)
            if not strikes:
                expiries = ", ".join(e.isoformat() for e in self.expiries(underlying)) or "none"
                raise ConfigError(f"no {underlying} options expiring {expiry.isoformat()} "
                                  f"(expiries: {expiries})")
            near = sorted(strikes, key=lambda s: abs(s - strike))[:5]
            raise ConfigError(f"no {underlying} {expiry.isoformat()} {strike:g} {right}; "
                              f"nearest strikes: {', '.join(f'{s:g}' for s in sorted(near))}")
        return ins

    def future(self, underlying: str, expiry: date | None = None) -> Instrument:
        """The future of ``expiry``, or the nearest-expiring one."""
        rows = self.derivatives(underlying, expiry=expiry, instrument_type="FUT")
        if not rows:
            raise ConfigError(f"no {underlying} future"
                              + (f" expiring {expiry.isoformat()}" if expiry else ""))
        return rows[0]

    # --- search and resolve ----------------------------------------------------------------

    def closest(self, query: str, n: int = 5) -> list[str]:
        """Up to ``n`` tradingsymbols or names that look most like ``query``."""
        if n < 1:
            return []
        key = _norm(query)
        candidates = list(self._by_symbol) + [k for k in self._by_name if k not in self._by_symbol]
        out = difflib.get_close_matches(key, candidates, n=n, cutoff=0.5)
        if len(out) < n:
            for cand in sorted(c for c in candidates if key and (key in c or c in key)):
                if cand not in out:
                    out.append(cand)
                if len(out) >= n:
                    break
        return [self._display(c) for c in out[:n]]

    def _display(self, key: str) -> str:
        rows = self._by_symbol.get(key)
        if rows:
            return rows[0].tradingsymbol
        return self._by_name[key][0].name

    def search(self, query: str, limit: int = 20) -> list[Instrument]:
        """Instruments for a free-text query: exact symbol/name matches, then tradingsymbols
        or names containing every word of the query, then fuzzy matches."""
        key = _norm(query)
        if not key or limit < 1:
            return []
        out: list[Instrument] = []
        seen: set[int] = set()

        def add(rows: Iterable[Instrument]) -> None:
            for r in rows:
                if r.instrument_token not in seen and len(out) < limit:
                    seen.add(r.instrument_token)
                    out.append(r)

        if key.isdigit() and int(key) in self._by_token:
            add([self._by_token[int(key)]])
        add(self.by_symbol(key))
        words = key.split()
        add(r for r in self._rows
            if all(w in _norm(r.tradingsymbol) or w in _norm(r.name) for w in words))
        for cand in self.closest(key, n=limit):
            add(self.by_symbol(cand))
        return out

    def resolve(self, symbols: Sequence[str | int]) -> list[Instrument]:
        """One instrument per symbol, in order. A symbol is an instrument token (int or
        digits), ``EXCHANGE:TRADINGSYMBOL``, a tradingsymbol, or an instrument's name
        ("NIFTY 50"). A bare symbol on several exchanges resolves to the first of
        ``EXCHANGE_PREFERENCE``. Unknown or ambiguous symbols raise one ``ConfigError``
        naming each, with the closest matches."""
        out: list[Instrument] = []
        problems: list[str] = []
        for sym in symbols:
            if isinstance(sym, int) or (isinstance(sym, str) and sym.strip().isdigit()):
                ins = self._by_token.get(int(sym))
                if ins is None:
                    problems.append(f"instrument token {int(sym)} is not in the instrument "
                                    "master")
                else:
                    out.append(ins)
                continue
            text = str(sym).strip()
            rows = self.by_symbol(text)
            if not rows:
                bare = text.split(":", 1)[1] if ":" in text else text
                near = self.closest(bare)
                hint = (f"; closest matches: {', '.join(near)}" if near
                        else "; no similar symbol")
                problems.append(f"unknown symbol {text!r}{hint}")
                continue
            pick = self._pick(rows)
            if pick is None:
                names = ", ".join(r.key for r in rows[:6]) + (", ..." if len(rows) > 6 else "")
                problems.append(f"symbol {text!r} is ambiguous: {len(rows)} instruments share "
                                f"it ({names}); use a tradingsymbol or EXCHANGE:SYMBOL")
                continue
            out.append(pick)
        if problems:
            raise ConfigError("; ".join(problems))
        return out

    @staticmethod
    def _pick(rows: list[Instrument]) -> Instrument | None:
        if len(rows) == 1:
            return rows[0]
        symbols = {_norm(r.tradingsymbol) for r in rows}
        if len(symbols) != 1:
            return None  # a shared name: NIFTY on every NIFTY future and option
        rank = {ex: i for i, ex in enumerate(EXCHANGE_PREFERENCE)}
        ordered = sorted(rows, key=lambda r: rank.get(r.exchange, len(rank)))
        if rank.get(ordered[0].exchange) == rank.get(ordered[1].exchange):
            return None
        return ordered[0]


# --- the daily cache ------------------------------------------------------------------------

def ist_today(now: datetime | None = None) -> date:
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(IST).date()


def cache_path(cache_dir: str | os.PathLike, day: date) -> Path:
    return Path(cache_dir) / f"{CACHE_PREFIX}{day.isoformat()}.csv"


def cached_master_path(cache_dir: str | os.PathLike, now: datetime | None = None) -> Path | None:
    """Today's (IST) cached master, if it exists."""
    path = cache_path(cache_dir, ist_today(now))
    return path if path.is_file() else None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fetch_records(api_key: str, access_token: str, root: str | None = None,
                  timeout: float | None = None, token_source: str | None = None,
                  ) -> list[dict[str, Any]]:
    """``KiteConnect(api_key, access_token, root).instruments()``, with the SDK's errors
    turned into ``AuthError`` (token refused) or ``ExchangeError`` (anything else).
    ``token_source`` names the environment variable the token came from (None: the cache),
    so that a refusal tells the user what to fix."""
    from kiteconnect import KiteConnect
    from kiteconnect import exceptions as kex

    kite = KiteConnect(api_key, access_token=access_token, root=root, timeout=timeout)
    where = root or KiteConnect._default_root_uri
    try:
        return kite.instruments()
    except kex.TokenException as exc:
        if token_source:
            raise AuthError(f"Kite refused the access token in {token_source} fetching "
                            f"instruments from {where} ({exc.code}): unset {token_source} "
                            "(to use the cached token) or replace it") from None
        raise AuthError(f"Kite refused the access token fetching instruments from {where} "
                        f"({exc.code}): run `shrivenq auth login`") from None
    except kex.KiteException as exc:
        raise ExchangeError(f"fetching instruments from {where} failed "
                            f"({type(exc).__name__}, HTTP {exc.code})") from None
    except Exception as exc:  # requests' connection errors carry the URL, never the token
        raise ExchangeError(f"fetching instruments from {where} failed: "
                            f"{type(exc).__name__}") from None


def sync(cache_dir: str | os.PathLike, api_key: str, access_token: str,
         root: str | None = None, now: datetime | None = None, force: bool = False,
         token_source: str | None = None) -> tuple[Path, bool]:
    """Make sure today's (IST) instrument master is cached; returns ``(path, downloaded)``.

    Reuses ``cache/kite_instruments_<today>.csv`` when it exists (unless ``force``);
    otherwise downloads through kiteconnect and writes it atomically."""
    path = cache_path(cache_dir, ist_today(now))
    if path.is_file() and not force:
        log.info("instrument master for %s already cached at %s", path.stem[-10:], path)
        return path, False
    records = fetch_records(api_key, access_token, root=root, token_source=token_source)
    if not records:
        raise ExchangeError("the instruments list came back empty; not caching it")
    try:
        _write_atomic(path, records_to_csv(records))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the instrument cache: {exc.strerror}") from None
    log.info("cached %d instruments at %s", len(records), path)
    return path, True


def load_master(cache_dir: str | os.PathLike | None = None, now: datetime | None = None,
                fallback_sample: bool = False) -> InstrumentMaster:
    """Today's cached master; the newest older one if today's is missing; else the
    shipped sample if ``fallback_sample``, else ``ConfigError`` saying to run sync."""
    if cache_dir is not None:
        path = cached_master_path(cache_dir, now)
        if path is None:
            older = sorted(Path(cache_dir).glob(f"{CACHE_PREFIX}????-??-??.csv"))
            if older:
                path = older[-1]
                log.warning("no instrument master for today; using %s", path.name)
        if path is not None:
            return InstrumentMaster.load(path)
    if fallback_sample:
        return InstrumentMaster.sample()
    raise ConfigError(f"no cached instrument master under {cache_dir}: run "
                      "`shrivenq instruments sync`")
