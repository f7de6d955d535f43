"""The one exception that peer bytes can cause in the protocol core."""

from __future__ import annotations

CLOSE_INVALID_PAYLOAD = 1007
"""RFC 6455 §7.4.1: data in a message inconsistent with its type (here: not a Phoenix message)."""
CLOSE_UNSUPPORTED_DATA = 1003
"""RFC 6455 §7.4.1: a data type the endpoint cannot accept (a binary frame on a vsn 1.0.0 socket)."""


class ProtocolError(Exception):
    """The client sent something that is not a Phoenix message for this serializer.

    Phoenix crashes the socket process on such input (`decode!`), so the connection is closed.
    `close_code` is the code to close with; `reason` is a short, fixed text safe to send to the
    client and to log: it never echoes the offending bytes.
    """

    def __init__(self, reason: str, close_code: int = CLOSE_INVALID_PAYLOAD) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code
