"""Sans-I/O Phoenix Channels core: messages, serializers and the per-socket session state machine.

Imports no trio, sockets or I/O libraries (architecture.md; enforced by tests/test_layering.py).
"""

from .errors import CLOSE_INVALID_PAYLOAD, CLOSE_UNSUPPORTED_DATA, ProtocolError
from .identity import Identity
from .message import (
    HEARTBEAT,
    PHOENIX_TOPIC,
    PHX_CLOSE,
    PHX_ERROR,
    PHX_JOIN,
    PHX_LEAVE,
    PHX_REPLY,
    STATUS_ERROR,
    STATUS_OK,
    Broadcast,
    Message,
    Payload,
    Reply,
)
from .serializer import Serializer, serializer_for_vsn
from .session import (
    CHANNEL_CRASH,
    CLOSED,
    DUPLICATE_JOIN,
    JOIN_CRASHED,
    LEFT,
    NORMAL,
    TOO_MANY_CHANNELS,
    UNMATCHED_TOPIC,
    Action,
    HandleIn,
    Join,
    Reason,
    Send,
    Session,
    Terminate,
)
from .shared import SharedFrames
from .v1_json import V1, V1JSONSerializer
from .v2_json import V2, V2JSONSerializer

__all__ = [
    "CHANNEL_CRASH",
    "CLOSED",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_UNSUPPORTED_DATA",
    "DUPLICATE_JOIN",
    "HEARTBEAT",
    "JOIN_CRASHED",
    "LEFT",
    "NORMAL",
    "PHOENIX_TOPIC",
    "PHX_CLOSE",
    "PHX_ERROR",
    "PHX_JOIN",
    "PHX_LEAVE",
    "PHX_REPLY",
    "STATUS_ERROR",
    "STATUS_OK",
    "TOO_MANY_CHANNELS",
    "UNMATCHED_TOPIC",
    "V1",
    "V2",
    "Action",
    "Broadcast",
    "HandleIn",
    "Identity",
    "Join",
    "Message",
    "Payload",
    "ProtocolError",
    "Reason",
    "Reply",
    "Send",
    "Serializer",
    "Session",
    "SharedFrames",
    "Terminate",
    "V1JSONSerializer",
    "V2JSONSerializer",
    "serializer_for_vsn",
]
