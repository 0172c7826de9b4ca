"""The built-in simulators: Kite (``kite_server``) and Binance (``binance_server``) speaking
the exchanges' wire protocols on loopback, over synthetic markets."""

from __future__ import annotations

from shrivenq.errors import ConfigError


def check_ports(port: int, rest_port: int | None) -> int:
    """The REST port a simulator will use (``port + 1`` by default, 0 with 0); ConfigError
    naming the option if a port is not 0-65535."""
    for option, value in (("--port", port), ("--rest-port", rest_port)):
        if value is not None and not 0 <= value <= 65535:
            raise ConfigError(f"{option} {value}: a port must be 0-65535")
    if rest_port is None:
        rest_port = port + 1 if port else 0
        if rest_port > 65535:
            raise ConfigError(f"--port {port}: the REST port defaults to --port + 1 = "
                              f"{rest_port}, but a port must be 0-65535; give --rest-port")
    return rest_port
