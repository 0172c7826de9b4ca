"""Kite WebSocket session rules, sans-I/O: subscription messages, sharding across
connections, and URLs that never leak a token into a log (reconnect pacing is
``shrivenq.backoff``, shared with Binance).

Nothing here touches a socket; ``shrivenq.kite.feed`` is the asyncio layer that uses it.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit, urlunsplit

from shrivenq.errors import ConfigError

MODES = ("ltp", "quote", "full")
MAX_TOKENS_PER_CONNECTION = 3000
MAX_CONNECTIONS = 3
DEFAULT_ROOT = "wss://ws.kite.trade"


def subscribe_message(tokens: list[int]) -> str:
    return json.dumps({"a": "subscribe", "v": [int(t) for t in tokens]})


def unsubscribe_message(tokens: list[int]) -> str:
    return json.dumps({"a": "unsubscribe", "v": [int(t) for t in tokens]})


def mode_message(mode: str, tokens: list[int]) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown Kite mode {mode!r}; expected one of {', '.join(MODES)}")
    return json.dumps({"a": "mode", "v": [mode, [int(t) for t in tokens]]})


def subscription_messages(token_modes: dict[int, str]) -> list[str]:
    """What to send on a fresh connection: one subscribe, then one mode message per mode."""
    if not token_modes:
        return []
    by_mode: dict[str, list[int]] = {}
    for token, mode in token_modes.items():
        by_mode.setdefault(mode, []).append(token)
    messages = [subscribe_message(list(token_modes))]
    messages += [mode_message(mode, tokens) for mode, tokens in sorted(by_mode.items())]
    return messages


def shard(token_modes: dict[int, str], per_connection: int = MAX_TOKENS_PER_CONNECTION,
          connections: int = MAX_CONNECTIONS) -> list[dict[int, str]]:
    """Split a subscription across as few connections as Kite's limits allow.

    Kite allows 3 connections per API key and 3000 instruments per connection; asking for
    more than that raises ConfigError before anything connects.
    """
    limit = per_connection * connections
    if len(token_modes) > limit:
        raise ConfigError(
            f"{len(token_modes)} instruments requested; Kite allows at most {limit} "
            f"({connections} connections x {per_connection} instruments per API key)")
    for token, mode in token_modes.items():
        if mode not in MODES:
            raise ConfigError(f"unknown Kite mode {mode!r} for token {token}")
    items = list(token_modes.items())
    return [dict(items[i:i + per_connection]) for i in range(0, len(items), per_connection)] or [{}]


def feed_url(root: str, api_key: str, access_token: str) -> str:
    """The WebSocket URL with credentials, as Kite expects them: ``?api_key=..&access_token=..``."""
    parts = urlsplit(root)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(f"Kite feed URL must start with ws:// or wss://, not {root!r}")
    query = urlencode({"api_key": api_key, "access_token": access_token})
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))


def redacted(url: str) -> str:
    """A feed URL safe for logs: the query (which holds the credentials) is dropped."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
