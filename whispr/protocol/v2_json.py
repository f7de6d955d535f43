"""vsn 2.0.0 (`Phoenix.Socket.V2.JSONSerializer`): `[join_ref, ref, topic, event, payload]` arrays
in text frames, and the binary frames of protocol.md §2.3 when the payload is `bytes`.
"""

from __future__ import annotations

from ._json import dumps, loads, message_from_fields
from .errors import ProtocolError
from .message import PHX_REPLY, Broadcast, Message, Payload, Reply

# Binary frame kinds (serializer.js `KINDS`; V2 serializer `@push`, `@reply`, `@broadcast`).
KIND_PUSH = 0
KIND_REPLY = 1
KIND_BROADCAST = 2

_CLIENT_PUSH_HEADER = 5  # kind, join_ref_len, ref_len, topic_len, event_len
_BAD_ARRAY = "expected [join_ref, ref, topic, event, payload]"
_BAD_BINARY = "invalid binary frame"


def _field(value: str | None) -> bytes:
    """A length-prefixed header field: nil is the empty string (Phoenix `to_string(nil)`)."""
    data = value.encode() if value else b""
    if len(data) > 255:
        raise ValueError("binary frame header fields are limited to 255 bytes (protocol.md §2.3)")
    return data


def _json_payload(payload: Payload) -> Payload:
    if not isinstance(payload, dict):
        raise TypeError(f"a JSON payload must be a dict, got {type(payload).__name__}")
    return payload


class V2JSONSerializer:
    """The serializer phoenix.js uses by default (vsn 2.0.0)."""

    vsn = "2.0.0"

    def decode(self, data: str | bytes) -> Message:
        """Decode a client text frame (`str`) or binary frame (`bytes`).

        Text: the first five array elements are taken and more are ignored (Phoenix `decode!`);
        refs are strings or null; topic and event are strings; the payload must be an object.
        Binary: kind 0 (push) with four length bytes, then join_ref, ref, topic, event and the raw
        payload. Empty refs stay empty strings, as in Phoenix `decode_binary/1`.

        Raises:
            ProtocolError: anything else.
        """
        if isinstance(data, bytes):
            return _decode_binary(data)
        value = loads(data)
        if type(value) is not list or len(value) < 5:
            raise ProtocolError(_BAD_ARRAY)
        join_ref, ref, topic, event, payload = value[:5]
        return message_from_fields(join_ref, ref, topic, event, payload, _BAD_ARRAY)

    def encode(self, message: Message | Reply | Broadcast) -> bytes:
        """The bytes of one frame: JSON text, or a binary frame body when the payload is `bytes`.

        Raises:
            TypeError, ValueError: the payload cannot be encoded (not a dict, NaN, a set, a header
                field over 255 bytes). The caller's bug, never the peer's.
        """
        payload = message.payload
        if isinstance(message, Reply):
            if isinstance(payload, bytes):
                return b"".join(
                    _header(KIND_REPLY, message.join_ref, message.ref, message.topic, message.status, data=payload)
                )
            response = {"status": message.status, "response": _json_payload(payload)}
            return dumps([message.join_ref, message.ref, message.topic, PHX_REPLY, response])
        if isinstance(message, Broadcast):
            if isinstance(payload, bytes):
                return b"".join(_header(KIND_BROADCAST, message.topic, message.event, data=payload))
            return dumps([None, None, message.topic, message.event, _json_payload(payload)])
        if isinstance(payload, bytes):
            # A server push has no ref in binary form (protocol.md §2.3).
            return b"".join(_header(KIND_PUSH, message.join_ref, message.topic, message.event, data=payload))
        return dumps([message.join_ref, message.ref, message.topic, message.event, _json_payload(payload)])


def _header(kind: int, *fields: str | None, data: bytes) -> list[bytes]:
    encoded = [_field(value) for value in fields]
    return [bytes((kind, *map(len, encoded))), *encoded, data]


def _decode_binary(data: bytes) -> Message:
    if len(data) < _CLIENT_PUSH_HEADER or data[0] != KIND_PUSH:
        raise ProtocolError(_BAD_BINARY)
    offset = _CLIENT_PUSH_HEADER
    fields: list[str] = []
    for size in data[1:_CLIENT_PUSH_HEADER]:
        end = offset + size
        if end > len(data):
            raise ProtocolError(_BAD_BINARY)
        try:
            fields.append(data[offset:end].decode())
        except UnicodeDecodeError:
            raise ProtocolError(_BAD_BINARY) from None
        offset = end
    join_ref, ref, topic, event = fields
    return Message(topic, event, data[offset:], ref, join_ref)


V2 = V2JSONSerializer()
