"""The compiled depthUpdate decoder against its plain-Python twin: on Binance's own form it
always answers, and on any message, valid or hostile, whatever it returns is exactly what
the twin returns (when it declines, the twin decides and names the error)."""

from __future__ import annotations

import json
import platform
import random
import sys

import numpy as np
import pytest

from shrivenq._ext.binance_depth import _use_simd, decode_depth
from shrivenq.binance import decode
from shrivenq.errors import BinanceMessageError
from shrivenq.sim.binance_market import BinanceMarket, dumps


@pytest.fixture(autouse=True, params=["ssse3", "scalar"])
def pair_reader(request):
    """Every test runs with the SSSE3 pair reader (x86-64 hosts, where it must be in use)
    and with the scalar scan alone."""
    in_use = _use_simd(request.param == "ssse3")
    if (request.param == "ssse3" and platform.machine() in ("x86_64", "AMD64")
            and sys.maxsize > 2**32 and sys.platform != "win32"):   # where it is compiled in
        assert in_use, "SSSE3 pair reader not in use on a 64-bit x86 host"
    yield request.param
    _use_simd(True)


def same(a, b):
    return (a[:5] == b[:5] and all(np.array_equal(x, y) and x.dtype == y.dtype
                                   for x, y in zip(a[5:], b[5:])))


def twin(raw, specs, futures):
    try:
        return decode.depth_message(raw, specs, futures)
    except BinanceMessageError as exc:
        return exc


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_binance_messages_decode_identically_and_never_fall_back(futures):
    market = BinanceMarket(futures=futures, seed=21)
    specs = decode.exchange_info(dumps(market.exchange_info()))
    for k in range(3000):
        sym = list(specs)[k % len(specs)]
        data = market.depth_update(sym)
        raw = dumps({"stream": f"{sym.lower()}@depth@100ms", "data": data}).encode()
        fast = decode_depth(raw, specs, futures)
        assert fast is not None, raw
        assert same(fast, twin(raw, specs, futures))


def test_other_streams_are_declined():
    market = BinanceMarket(seed=3)
    specs = decode.exchange_info(dumps(market.exchange_info()))
    for raw in (dumps({"stream": "btcusdt@trade", "data": market.trade("BTCUSDT")}),
                dumps({"stream": "btcusdt@bookTicker", "data": market.book_ticker("BTCUSDT")}),
                dumps({"e": "serverShutdown", "E": 1})):
        assert decode_depth(raw.encode(), specs, False) is None


BASE = {"stream": "btcusdt@depth@100ms", "data": {
    "e": "depthUpdate", "E": 123, "s": "BTCUSDT", "U": 157, "u": 160,
    "b": [["64000.01000000", "0.10000000"], ["63999.99", "0"]],
    "a": [["64000.02000000", "1.5"]]}}
SPECS = {"BTCUSDT": decode.SymbolSpec("BTCUSDT", 2, 5, "0.01", "0.00001")}


@pytest.mark.parametrize("text", [
    # valid but unusual: whitespace, key order, extra keys, nested values, escapes
    ' { "data" : {"u":160,"U":157,"s":"BTCUSDT","e":"depthUpdate","a":[],"b":[]} , '
    '"stream" : "btcusdt@depth" } ',
    '{"stream":"btcusdt@depth@100ms","x":[1,{"y":null}],"data":{"e":"depthUpdate","E":1,'
    '"T":2.5e3,"s":"BTCUSDT","U":1,"u":1,"b":[["1.00","2"]],"a":[["2","1e-5"]],"z":true}}',
    '{"stream":"btcusdt@depth","data":{"e":"depth\\u0055pdate","s":"BTCUSDT","U":1,"u":1,'
    '"b":[],"a":[]}}',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":1,'
    '"b":[["1","2",[]]],"a":[]}}',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":1,"E":-4,'
    '"b":[],"a":[],"T":NaN}}',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":1,'
    '"b":[["123456789012345678.00","1"]],"a":[]}}',
    # duplicates: JSON says the last one wins
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"U":2,"u":3,'
    '"b":[],"a":[]}}',
    # hostile
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":5,"u":3,"b":[],'
    '"a":[]}}',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":1,'
    '"b":[["1.001","2"]],"a":[]}}',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"NOPE","U":1,"u":1,"b":[],'
    '"a":[]}}',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":1,"b":[]}}',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":01,"u":1,"b":[],'
    '"a":[]}}',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":1,"b":[],'
    '"a":[]}} trailing',
    '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":1.0,'
    '"b":[],"a":[]}}',
    '{"stream":"btcusdt@depth","data":[]}', '{"stream":"btcusdt@depth"}', "", "{", "[]",
])
def test_unusual_and_hostile_messages_agree_with_the_twin(text):
    raw = text.encode()
    fast = decode_depth(raw, SPECS, False)
    expected = twin(raw, SPECS, False)
    if fast is not None:
        assert same(fast, expected)
    else:
        assert expected is None or isinstance(expected, (BinanceMessageError, tuple))


def test_random_byte_mutations_never_disagree_with_the_twin():
    rng = random.Random(8)
    # Binance's compact form (what the SSSE3 pair reader takes) and a spaced one
    bases = (dumps(BASE).encode(), json.dumps(BASE).encode())
    alphabet = b'{}[]":,.0123456789eE-+ abcdu\\'
    agreed = declined = 0
    for k in range(6000):
        raw = bytearray(bases[k % 2])
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(raw))
            op = rng.random()
            if op < 0.4:
                raw[i] = rng.choice(alphabet)
            elif op < 0.7:
                del raw[i]
            else:
                raw.insert(i, rng.choice(alphabet))
        raw = bytes(raw)
        fast = decode_depth(raw, SPECS, False)
        if fast is None:
            declined += 1
            continue
        expected = twin(raw, SPECS, False)
        assert not isinstance(expected, BinanceMessageError), (raw, expected)
        assert same(fast, expected), raw
        agreed += 1
    assert agreed > 100 and declined > 1000


def test_decimals_of_every_length_and_scale_agree_with_the_twin():
    """The compiled decoder reads the common decimal form eight bytes at a time and anything
    else a character at a time: every length of whole and fractional part, at every scale,
    with trailing zeros or digits past the scale, decodes as the twin decodes it."""
    rng = random.Random(11)
    for _ in range(4000):
        ps, qs = rng.randint(0, 18), rng.randint(0, 18)
        specs = {"BTCUSDT": decode.SymbolSpec("BTCUSDT", ps, qs, "1", "1")}

        def number():
            whole = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 10)))
            frac = "".join(rng.choice("0000123456789") for _ in range(rng.randint(0, 11)))
            if rng.random() < 0.3:
                frac = frac[:rng.randint(0, 4)] + "0" * rng.randint(0, 8)
            text = whole + ("." + frac if frac or rng.random() < 0.1 else "")
            return text or "0"

        levels = [[number(), number()] for _ in range(rng.randint(0, 4))]
        pad = " " * rng.randint(0, 20) if rng.random() < 0.2 else ""
        raw = dumps({"stream": "btcusdt@depth", "data": {
            "e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": 2, "b": levels,
            "a": levels[::-1]}}).encode() + pad.encode()
        fast = decode_depth(raw, specs, False)
        expected = twin(raw, specs, False)
        if fast is None:
            continue
        assert not isinstance(expected, BinanceMessageError), (raw, expected)
        assert same(fast, expected), raw


def test_the_symbol_cache_follows_the_specs_it_is_given():
    """The decoder remembers recent symbols with their scales; a new spec for a symbol (a
    new exchangeInfo, or the dict changed in place) and many symbols sharing cache slots
    still decode at the scales the specs say."""
    raw = json.dumps(BASE).encode()
    two = {"BTCUSDT": decode.SymbolSpec("BTCUSDT", 2, 5, "0.01", "0.00001")}
    three = {"BTCUSDT": decode.SymbolSpec("BTCUSDT", 3, 8, "0.001", "0.00000001")}
    assert decode_depth(raw, two, False).bid_prices.tolist() == [6400001, 6399999]
    assert decode_depth(raw, three, False).bid_prices.tolist() == [64000010, 63999990]
    two["BTCUSDT"] = three["BTCUSDT"]
    assert decode_depth(raw, two, False).bid_qtys.tolist() == [10000000, 0]
    assert decode_depth(raw, {}, False) is None
    names = [f"S{i:03d}USDT" for i in range(200)]
    specs = {n: decode.SymbolSpec(n, 2 + i % 9, 1 + (i * 7) % 9, "1", "1")
             for i, n in enumerate(names)}
    rng = random.Random(4)
    for _ in range(2000):
        name = rng.choice(names)
        msg = json.loads(raw)
        msg["data"]["s"] = name
        raw_n = json.dumps(msg).encode()
        assert same(decode_depth(raw_n, specs, False), twin(raw_n, specs, False)), name


def near_template(data: dict, stream: str, futures: bool) -> list[str]:
    """Compact messages one step off the form Binance sends (key order, whitespace, extra,
    missing or odd fields): the decoder's template declines them and its general scan, or
    the twin, decides; the answer must be the twin's."""
    def msg(d, s=stream, first="stream"):
        env = {"stream": s, "data": d} if first == "stream" else {"data": d, "stream": s}
        return dumps(env)

    def without(*keys):
        return {k: v for k, v in data.items() if k not in keys}

    keys = list(data)
    base = msg(data)
    out = [base, msg(data, first="data"), base + " ", base + "\n", " " + base,
           base.replace('"E":', '"E": ', 1), base.replace(',"b":', ', "b":', 1),
           base.replace('}}', '} }', 1), base.replace('"stream":', '"stream" :', 1),
           msg(dict(reversed(data.items()))), msg(dict(data, x=1)), msg(dict(data, x=[1, {}])),
           msg({"x": 1, **data}), msg(without("E")), msg(without("T")), msg(without("pu")),
           msg(dict(data, E=-1)), msg(dict(data, E=1.5)), msg(dict(data, T="t")),
           msg(dict(data, T=-3)), msg(dict(data, pu=data["U"] - 1)),
           msg(dict(data, U=data["u"] + 1)), msg(dict(data, s="NOPEUSDT")),
           msg(dict(data, s="btcusdt")), msg(dict(data, e="depthUpdatf")),
           msg(data, s="btcusdt@trade"), msg(data, s="btcusdt@dept"),
           msg(data, s="btcusdt\\u0040depth"), msg(dict(data, b=[], a=[])),
           msg(dict(data, b=data["b"] + [["1", "-1"]])), msg(dict(data, u=10**19)),
           base[:-1], base[:-2], base + "}", base.replace('"U":', '"U":0,"U":', 1)]
    for i in range(len(keys) - 1):     # each pair of neighbouring keys swapped
        order = keys[:i] + [keys[i + 1], keys[i]] + keys[i + 2:]
        out.append(msg({k: data[k] for k in order}))
    return out


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
def test_messages_off_binances_own_form_agree_with_the_twin(futures):
    market = BinanceMarket(futures=futures, seed=9)
    specs = decode.exchange_info(dumps(market.exchange_info()))
    for sym in ("BTCUSDT", "ETHUSDT", "DOGEUSDT"):
        data = market.depth_update(sym)
        texts = near_template(data, f"{sym.lower()}@depth@100ms", futures)
        # Binance's own form (the first) and its whitespace and key-order variants are valid
        # depth messages the compiled decoder must take itself, not leave to the twin.
        must_accept = texts[:9] + [texts[9]]
        accepted = 0
        for text in texts:
            raw = text.encode()
            fast = decode_depth(raw, specs, futures)
            expected = twin(raw, specs, futures)
            if text in must_accept:
                assert fast is not None, raw
            if fast is not None:   # when it declines, the twin's answer is the answer
                accepted += 1
                assert not isinstance(expected, BinanceMessageError), (raw, expected)
                assert same(fast, expected), raw
        assert accepted >= len(must_accept)


def test_decimals_around_sixteen_bytes_agree_with_the_twin():
    """The SSSE3 reader takes decimals of up to 15 characters from one 16-byte load: every
    length from 1 to 18 characters, every place of the dot, at scales that keep or drop
    fraction digits, decodes as the twin decodes it, first and last in a list (the
    message's very last pair has no room for a 16-byte load: the scalar scan reads it)."""
    rng = random.Random(16)
    checked = 0
    for length in range(1, 19):
        for dot in [None, *range(1, length - 1)]:
            digits = [rng.choice("123456789") for _ in range(length)]
            if dot is not None:
                digits[dot] = "."
            text = "".join(digits)
            for scale in (0, 2, 8, 18 - (dot if dot is not None else length)):
                specs = {"BTCUSDT": decode.SymbolSpec("BTCUSDT", scale, scale, "1", "1")}
                zeros = (text + "000") if dot is not None else text
                for levels in ([[text, zeros], ["1", "2"]], [["1", "2"], [zeros, text]]):
                    raw = dumps({"stream": "btcusdt@depth", "data": {
                        "e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": 2, "b": levels,
                        "a": levels}}).encode()
                    fast = decode_depth(raw, specs, False)
                    expected = twin(raw, specs, False)
                    if fast is not None:
                        assert not isinstance(expected, BinanceMessageError), (raw, expected)
                        assert same(fast, expected), raw
                        checked += 1
    assert checked > 300
