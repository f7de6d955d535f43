"""The serializer behaviour (`Phoenix.Socket.Serializer`) and vsn negotiation."""

from __future__ import annotations

import re
from typing import Protocol

from .message import Broadcast, Message, Reply
from .v1_json import V1
from .v2_json import V2


class Serializer(Protocol):
    """Turns client frames into `Message`s and server structs into frame bytes.

    Implementations are stateless singletons (`V1`, `V2`): one instance per vsn, so a broadcast
    can be encoded once per serializer in use and shared by every subscriber (Phoenix fastlane).
    """

    @property
    def vsn(self) -> str:
        """The protocol version this serializer speaks, e.g. "2.0.0"."""
        ...

    def decode(self, data: str | bytes) -> Message:
        """Decode one client frame (`str` for text, `bytes` for binary).

        Raises:
            ProtocolError: the only exception, whatever the input.
        """
        ...

    def encode(self, message: Message | Reply | Broadcast) -> bytes:
        """Encode one server frame: text, or a binary frame body when the payload is `bytes`.

        Raises:
            TypeError, ValueError: the payload cannot be encoded (a bug of the sender).
        """
        ...


# Elixir `Version.parse/1`: MAJOR.MINOR.PATCH without leading zeros (pre-releases are refused).
_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")


def serializer_for_vsn(vsn: str) -> Serializer | None:
    """The serializer for a client's `vsn` query parameter, or None (Phoenix answers 403).

    Phoenix's default serializers are `[{V1, "~> 1.0.0"}, {V2, "~> 2.0.0"}]`: any 1.0.x is V1,
    any 2.0.x is V2 (`Phoenix.Socket.__connect__/3`).
    """
    match = _VERSION.fullmatch(vsn)
    if match is None:
        return None
    major_minor = match.group(1, 2)
    if major_minor == ("2", "0"):
        return V2
    if major_minor == ("1", "0"):
        return V1
    return None
