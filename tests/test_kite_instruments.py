"""The Kite instrument master: the shipped sample, lookups, resolve's errors, the daily cache."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timezone

import pytest
from kiteconnect import KiteConnect

from shrivenq.errors import AuthError, ConfigError
from shrivenq.kite.instruments import (
    CSV_COLUMNS, Instrument, InstrumentMaster, cache_path, ist_today, load_master,
    records_to_csv, sample_csv_bytes, sync,
)
from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, SimThread


@pytest.fixture(scope="module")
def master() -> InstrumentMaster:
    return InstrumentMaster.sample()


def test_sample_is_kites_csv_format():
    text = sample_csv_bytes().decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(csv.reader(io.StringIO(text)).__next__()) == CSV_COLUMNS
    assert 100 <= len(rows) <= 300
    kinds = {(r["instrument_type"], r["segment"]) for r in rows}
    assert {("EQ", "INDICES"), ("EQ", "NSE"), ("FUT", "NFO-FUT"), ("CE", "NFO-OPT"),
            ("PE", "NFO-OPT")} <= kinds
    segment_byte = {"INDICES": 9, "NSE": 1, "NFO-FUT": 2, "NFO-OPT": 2}
    for r in rows:
        token = int(r["instrument_token"])
        assert token & 0xFF == segment_byte[r["segment"]], r["tradingsymbol"]
        assert token >> 8 == int(r["exchange_token"])
    assert len({r["instrument_token"] for r in rows}) == len(rows)
    # kiteconnect's own parser reads it
    parsed = KiteConnect._parse_instruments(None, sample_csv_bytes())
    assert len(parsed) == len(rows)


def test_indices_resolve_to_their_kite_tokens(master):
    nifty, bank = master.resolve(["NIFTY 50", "NIFTY BANK"])
    assert (nifty.token, bank.token) == (256265, 260105)
    assert nifty.is_index and bank.is_index
    assert [i.token for i in master.resolve(["nifty 50", "NSE:NIFTY BANK", 256265, "260105"])] \
        == [256265, 260105, 256265, 260105]


def test_lookups(master):
    infy = master.by_token(408065)
    assert infy.tradingsymbol == "INFY" and infy.exchange == "NSE"
    assert master.get(1) is None and 408065 in master and 1 not in master
    assert master.by_symbol("infy") == [infy]
    assert master.by_symbol("INFOSYS") == [infy]          # by name
    assert master.by_symbol("nse:Infy") == [infy]
    assert master.by_symbol("INFY", exchange="NFO") == []
    with pytest.raises(ConfigError, match="1234"):
        master.by_token(1234)


def test_derivative_lookups(master):
    nov, dec = master.expiries("NIFTY")
    assert (nov, dec) == (date(2025, 11, 25), date(2025, 12, 30))
    ce = master.option("nifty", nov, 26000, "ce")
    pe = master.option("NIFTY", nov, 26000.0, "PE")
    assert ce.tradingsymbol == "NIFTY25NOV26000CE" and pe.tradingsymbol == "NIFTY25NOV26000PE"
    assert ce.is_option and ce.lot_size == 75 and ce.expiry == nov and ce.strike == 26000.0
    assert master.by_token(ce.token) is ce
    chain = master.derivatives("NIFTY", expiry=nov, strike=26000)
    assert [i.instrument_type for i in chain] == ["CE", "PE"]
    fut = master.future("BANKNIFTY")
    assert fut.tradingsymbol == "BANKNIFTY25NOVFUT" and fut.is_future
    assert master.future("BANKNIFTY", dec).expiry == dec
    strikes = master.strikes("NIFTY", nov)
    assert len(strikes) >= 9 and strikes == sorted(strikes)
    with pytest.raises(ConfigError, match="nearest strikes: .*26000"):
        master.option("NIFTY", nov, 26010, "CE")
    with pytest.raises(ConfigError, match="expiries: 2025-11-25, 2025-12-30"):
        master.option("NIFTY", date(2025, 11, 27), 26000, "CE")


def test_unknown_symbol_lists_closest_matches(master):
    with pytest.raises(ConfigError) as info:
        master.resolve(["NIFTY 50", "NIFTY 5O", "RELIANSE"])
    msg = str(info.value)
    assert "'NIFTY 5O'" in msg and "NIFTY 50" in msg.split("'NIFTY 5O'")[1]
    assert "'RELIANSE'" in msg and "RELIANCE" in msg.split("'RELIANSE'")[1]
    with pytest.raises(ConfigError, match="no similar symbol"):
        master.resolve(["QQQQQQQQQQ"])
    with pytest.raises(ConfigError, match="not in the instrument master"):
        master.resolve([12345])


def test_shared_name_is_ambiguous(master):
    with pytest.raises(ConfigError, match="ambiguous.*NIFTY25NOVFUT"):
        master.resolve(["NIFTY"])


def test_same_symbol_on_two_exchanges_prefers_nse():
    nse = Instrument(408065, 1594, "INFY", "INFOSYS", 0.0, None, 0.0, 0.05, 1, "EQ", "NSE", "NSE")
    bse = Instrument(128053508, 500209, "INFY", "INFOSYS", 0.0, None, 0.0, 0.05, 1, "EQ", "BSE",
                     "BSE")
    m = InstrumentMaster([bse, nse])
    assert m.resolve(["INFY"]) == [nse]
    assert m.resolve(["BSE:INFY"]) == [bse]


def test_search(master):
    hits = master.search("nifty 26000")
    assert hits and all("26000" in h.tradingsymbol for h in hits[:4])
    assert master.search("408065")[0].tradingsymbol == "INFY"
    assert master.search("")  == []


def test_csv_round_trip(master):
    again = InstrumentMaster.from_csv(master.to_csv())
    assert list(again) == list(master)
    records = KiteConnect._parse_instruments(None, sample_csv_bytes())
    assert list(InstrumentMaster.from_csv(records_to_csv(records))) == list(master)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        InstrumentMaster.load(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a Kite instruments CSV"):
        InstrumentMaster.load(bad)
    with pytest.raises(ConfigError, match="instruments sync"):
        load_master(tmp_path)
    assert len(load_master(tmp_path, fallback_sample=True)) == len(InstrumentMaster.sample())


def test_ist_day():
    # 20:00 UTC is 01:30 IST the next day
    assert ist_today(datetime(2025, 11, 20, 20, 0, tzinfo=timezone.utc)) == date(2025, 11, 21)
    assert ist_today(datetime(2025, 11, 20, 18, 29, tzinfo=timezone.utc)) == date(2025, 11, 20)


def test_sync_caches_once_per_ist_day(tmp_path):
    now = datetime(2025, 11, 20, 4, 0, tzinfo=timezone.utc)
    with SimThread() as sim:
        path, downloaded = sync(tmp_path, DEMO_API_KEY, DEMO_ACCESS_TOKEN, root=sim.rest_url,
                                now=now)
        assert downloaded and path == cache_path(tmp_path, date(2025, 11, 20))
        assert list(InstrumentMaster.load(path)) == list(InstrumentMaster.sample())
        assert load_master(tmp_path, now=now).resolve(["NIFTY 50"])[0].token == 256265
        # same IST day: no download even with the server refusing everything
        sim.reject_tokens = True
        assert sync(tmp_path, DEMO_API_KEY, DEMO_ACCESS_TOKEN, root=sim.rest_url,
                    now=now.replace(hour=18)) == (path, False)
        # the next IST day downloads again; a refused token is an AuthError naming no secret
        with pytest.raises(AuthError) as info:
            sync(tmp_path, DEMO_API_KEY, DEMO_ACCESS_TOKEN, root=sim.rest_url,
                 now=now.replace(hour=19))
        assert DEMO_ACCESS_TOKEN not in str(info.value)
        assert "auth login" in str(info.value)
        sim.reject_tokens = False
        path2, downloaded = sync(tmp_path, DEMO_API_KEY, DEMO_ACCESS_TOKEN, root=sim.rest_url,
                                 now=now.replace(hour=19))
        assert downloaded and path2.name == "kite_instruments_2025-11-21.csv"
        assert not list(tmp_path.glob("*.tmp"))
