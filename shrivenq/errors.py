"""Every error shrivenq raises on purpose derives from one root, ``ShrivenqError``.

Catch ``ShrivenqError`` to handle anything the library reports; catch a leaf to handle one
failure. Each error says what failed and where (a byte offset, a path, a segment, an argument).
Inputs from outside (network bytes, files, CLI arguments, environment) fail only this way.
Calling code that breaks an API's contract (an instrument key that is not a u64, columns of
different lengths) gets Python's own ``ValueError``/``TypeError``, as any library's would.

    ShrivenqError
    ├── ConfigError                 a bad CLI argument, config value or environment variable
    ├── AuthError                   Kite credentials missing or refused, or an expired token
    ├── ExchangeError               an exchange's REST API failed a request (network, HTTP, reply)
    ├── ProtocolError               bytes from an exchange that do not follow its protocol
    │   ├── BinanceMessageError     a Binance JSON message, REST body or decimal; carries
    │   │                           .where and .reason
    │   └── KiteFrameError          a Kite binary frame; carries .offset and .reason
    ├── ReplayError                 replay cannot do what was asked (no data, nothing in range,
    │                               a snapshot without its mark)
    └── WalError                    the write-ahead log
        ├── WalIOError              the disk said no (full, permission, vanished dir); carries .path
        ├── WalFormatError          not a WAL file, or a version this reader does not know
        ├── WalCorruptError         a block failed its length, checksum or decode; carries
        │                           .segment, .offset, .block
        └── WalLockedError          another writer holds the venue/stream; carries .path

Secrets (API keys, access tokens) never appear in an error message.

One warning, not an error: ``ShrivenqDataWarning`` (a ``UserWarning``), when a read's result
has holes that it still returns (feed gaps recorded during capture, or WAL damage read past
with ``on_corrupt="skip"``).
"""

from __future__ import annotations


class ShrivenqError(Exception):
    """Root of every error shrivenq raises on purpose."""


class ConfigError(ShrivenqError):
    """A CLI argument, config value or environment variable is missing or malformed."""


class AuthError(ShrivenqError):
    """Credentials are missing, the exchange refused them, or the access token expired.

    The message names the variable or file to fix; it never contains a secret.
    """


class ExchangeError(ShrivenqError):
    """An exchange's REST API could not be reached or answered with an error."""


class ProtocolError(ShrivenqError):
    """Bytes received from an exchange do not follow its documented protocol."""


class KiteFrameError(ProtocolError):
    """A Kite binary WebSocket frame is malformed.

    ``offset`` is the byte offset inside the frame where parsing stopped, ``reason`` a short
    description (for example ``"packet length 120 runs past the end of the frame"``).
    """

    def __init__(self, offset: int, reason: str):
        self.offset = offset
        self.reason = reason
        super().__init__(f"bad Kite frame at byte {offset}: {reason}")

    def __reduce__(self):
        return (type(self), (self.offset, self.reason))


class BinanceMessageError(ProtocolError):
    """A Binance stream message, REST body or decimal string is malformed or unrepresentable.

    ``where`` names what was being read (for example ``"BTCUSDT depthUpdate b[3] price"``),
    ``reason`` says what is wrong with it.
    """

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"bad Binance data in {where}: {reason}")

    def __reduce__(self):
        return (type(self), (self.where, self.reason))


class ReplayError(ShrivenqError):
    """Replay cannot do what was asked: no data there, nothing in range, an incomplete WAL."""


class WalError(ShrivenqError):
    """Something went wrong reading or writing the write-ahead log."""


class WalIOError(WalError):
    """The operating system refused a WAL operation; ``path`` names the file or directory."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class WalFormatError(WalError):
    """A file is not a shrivenq WAL segment, or was written by a newer format version."""


class WalCorruptError(WalError):
    """A block failed verification: bad length, checksum mismatch, or undecodable contents."""

    def __init__(self, segment, offset: int, block: int, reason: str):
        self.segment = str(segment)
        self.offset = offset
        self.block = block
        self.reason = reason
        # block -1: the damage is not inside a block (a segment header, a missing segment)
        where = (f"block {block} at byte {offset}" if block >= 0
                 else f"byte {offset}" if offset else "")
        super().__init__(f"{self.segment}: {where + ': ' if where else ''}{reason}")

    def __reduce__(self):
        return (type(self), (self.segment, self.offset, self.block, self.reason))


class WalLockedError(WalError):
    """Another live writer holds this venue and stream; ``path`` names its lock file."""

    def __init__(self, path):
        self.path = str(path)
        super().__init__(f"{self.path}: another WAL writer holds this venue and stream")

    def __reduce__(self):
        return (type(self), (self.path,))


class ShrivenqDataWarning(UserWarning):
    """A read's result has holes: the capture recorded feed gaps in its range (``ds.gaps``),
    or, with ``on_corrupt="skip"``, damaged or missing WAL data was left out (``ds.skipped``)."""
