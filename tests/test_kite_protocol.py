"""Kite session rules (sans-I/O): the exact messages kiteconnect sends, sharding limits,
backoff, and URLs that keep credentials out of logs."""

from __future__ import annotations

import json
import random

import pytest
from kiteconnect import KiteTicker

from shrivenq.backoff import Backoff
from shrivenq.errors import ConfigError
from shrivenq.kite.protocol import (
    feed_url, mode_message, redacted, shard, subscribe_message,
    subscription_messages, unsubscribe_message,
)


class _Recorder:
    def __init__(self):
        self.sent: list[bytes] = []

    def sendMessage(self, payload):  # noqa: N802 (the SDK's Autobahn name)
        self.sent.append(payload)


def sdk_messages(action) -> list[str]:
    ticker = KiteTicker.__new__(KiteTicker)
    ticker.ws = _Recorder()
    ticker.subscribed_tokens = {}
    action(ticker)
    return [m.decode() for m in ticker.ws.sent]


def test_messages_are_byte_identical_to_kiteconnects():
    tokens = [256265, 260105, 738561]
    assert [subscribe_message(tokens)] == sdk_messages(lambda t: t.subscribe(tokens))
    assert [unsubscribe_message(tokens)] == sdk_messages(lambda t: t.unsubscribe(tokens))
    assert [mode_message("full", tokens)] == sdk_messages(lambda t: t.set_mode("full", tokens))


def test_subscription_messages_subscribe_then_set_each_mode():
    messages = [json.loads(m) for m in subscription_messages({1: "full", 2: "ltp", 3: "full"})]
    assert messages == [{"a": "subscribe", "v": [1, 2, 3]}, {"a": "mode", "v": ["full", [1, 3]]},
                        {"a": "mode", "v": ["ltp", [2]]}]
    assert subscription_messages({}) == []


def test_unknown_mode_is_refused():
    with pytest.raises(ConfigError, match="unknown Kite mode 'fast'"):
        mode_message("fast", [1])
    with pytest.raises(ConfigError, match="token 7"):
        shard({7: "fast"})


def test_shards_fill_connections_of_3000_and_refuse_more_than_9000():
    modes = {t: "full" for t in range(7001)}
    shards = shard(modes)
    assert [len(s) for s in shards] == [3000, 3000, 1001]
    assert {t for s in shards for t in s} == set(modes)
    assert shard({t: "ltp" for t in range(9000)})[-1] and len(shard({1: "ltp"})) == 1
    with pytest.raises(ConfigError, match="9001 instruments requested; Kite allows at most 9000"):
        shard({t: "full" for t in range(9001)})


def test_feed_url_carries_credentials_and_redaction_removes_them():
    url = feed_url("wss://ws.kite.trade", "key123", "tok456secret")
    assert url == "wss://ws.kite.trade/?api_key=key123&access_token=tok456secret"
    assert "tok456" not in redacted(url) and "key123" not in redacted(url)
    with pytest.raises(ConfigError):
        feed_url("https://ws.kite.trade", "k", "t")


def test_backoff_grows_exponentially_with_jitter_under_a_cap_and_resets():
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(8.0, 0.5 * 2 ** n) for n in range(12)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings))
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    assert max(delays[6:]) > 2.0            # grows well past the base
    backoff.reset()
    assert backoff.next_delay() <= 0.5
