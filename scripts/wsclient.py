"""The load tool's lean WebSocket client, where ``scripts/chaoslib`` and the tests import it from:
it lives in ``scripts/loadlib/client.py``."""

from loadlib.client import (
    ClientConnection,
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    Response,
    connect,
)

__all__ = ["ClientConnection", "ConnectionClosed", "InvalidHandshake", "InvalidStatus", "Response", "connect"]
