"""Telling Kite WebSocket messages apart: tick frames, heartbeats and JSON text messages."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from shrivenq.errors import ProtocolError


class MessageKind(enum.Enum):
    TICKS = "ticks"          # binary frame of packets
    HEARTBEAT = "heartbeat"  # 1-byte binary frame sent when the feed is idle
    TEXT = "text"            # JSON: {"type": "order"|"error"|"message", "data": ...}


def classify(message: bytes | str) -> MessageKind:
    """What kind of message a WebSocket frame is, as websockets hands it over
    (``bytes`` for binary frames, ``str`` for text frames)."""
    if isinstance(message, str):
        return MessageKind.TEXT
    return MessageKind.HEARTBEAT if len(message) == 1 else MessageKind.TICKS


@dataclass(frozen=True)
class TextMessage:
    type: str   # "order", "error" or "message"
    data: Any


_TEXT_TYPES = {"order", "error", "message"}


def parse_text(message: str | bytes) -> TextMessage:
    """Parse a Kite text frame; anything else raises ``ProtocolError`` saying what is wrong."""
    try:
        doc = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"Kite text message is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "type" not in doc:
        raise ProtocolError("Kite text message is not an object with a 'type' key")
    kind = doc["type"]
    if kind not in _TEXT_TYPES:
        raise ProtocolError(f"Kite text message has unknown type {kind!r}")
    return TextMessage(type=kind, data=doc.get("data"))
