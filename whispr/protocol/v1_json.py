"""vsn 1.0.0 (`Phoenix.Socket.V1.JSONSerializer`): JSON objects, text frames only.

Outbound messages carry only `topic`, `event`, `payload` and `ref` (`encode_v1_fields_only/1`):
never a `join_ref`, so v1 clients cannot filter stale messages (protocol.md §2.1).
"""

from __future__ import annotations

from typing import Any

from ._json import dumps, loads, message_from_fields
from .errors import CLOSE_UNSUPPORTED_DATA, ProtocolError
from .message import PHX_REPLY, Broadcast, Message, Reply

_BAD_OBJECT = 'expected {"topic", "event", "payload", "ref"}'


class V1JSONSerializer:
    """The serializer of phoenix.js before 1.4 (vsn 1.0.0)."""

    vsn = "1.0.0"

    def decode(self, data: str | bytes) -> Message:
        """Decode a client text frame: an object with `topic`, `event`, `payload`, `ref` and an
        optional `join_ref` (`Message.from_map!/1`; other keys are ignored).

        Raises:
            ProtocolError: a binary frame (close 1003), or anything but such an object, with
                string topic and event, string-or-null refs and an object payload.
        """
        if isinstance(data, bytes):
            raise ProtocolError("binary frames need vsn 2.0.0", CLOSE_UNSUPPORTED_DATA)
        value = loads(data)
        if type(value) is not dict:
            raise ProtocolError(_BAD_OBJECT)
        try:
            topic = value["topic"]
            event = value["event"]
            payload = value["payload"]
            ref = value["ref"]
        except KeyError:
            raise ProtocolError(_BAD_OBJECT) from None
        return message_from_fields(value.get("join_ref"), ref, topic, event, payload, _BAD_OBJECT)

    def encode(self, message: Message | Reply | Broadcast) -> bytes:
        """The JSON text of one frame.

        Raises:
            TypeError: the payload is `bytes` (v1 has no binary frames) or not a dict.
            ValueError: the payload holds something JSON cannot carry.
        """
        payload: Any = message.payload
        if not isinstance(payload, dict):
            raise TypeError(f"vsn 1.0.0 payloads must be dicts, got {type(payload).__name__}")
        if isinstance(message, Reply):
            response = {"status": message.status, "response": payload}
            return dumps({"topic": message.topic, "event": PHX_REPLY, "payload": response, "ref": message.ref})
        ref = None if isinstance(message, Broadcast) else message.ref
        return dumps({"topic": message.topic, "event": message.event, "payload": payload, "ref": ref})


V1 = V1JSONSerializer()
