"""Strict JSON for the serializers: decoding raises only `ProtocolError`; encoding is compact ASCII.

Decoding hazards turned into `ProtocolError` (websockets' fuzzing contract: peer bytes either parse
or raise the one documented error): malformed JSON, `NaN`/`Infinity` (not JSON, and unencodable
back), numbers that overflow to infinity, integers over CPython's 4300-digit limit (ValueError)
and nesting deep enough to exhaust the recursion limit (RecursionError).

Encoding uses `ensure_ascii=True`: a client can send a lone surrogate escape (`"\\ud800"`), which
decodes to a `str` that has no UTF-8 form; ASCII escapes echo it back safely.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from .errors import ProtocolError
from .message import Message

_INVALID_JSON = "invalid JSON"


def _reject_constant(_name: str) -> NoReturn:
    raise ProtocolError(_INVALID_JSON)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ProtocolError(_INVALID_JSON)
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    """Parse one JSON document.

    Raises:
        ProtocolError: `text` is not strict JSON, or is too deep or too large a number to parse.
    """
    try:
        return _decoder.decode(text)
    except (ValueError, RecursionError):
        raise ProtocolError(_INVALID_JSON) from None


def dumps(value: Any) -> bytes:
    """Compact ASCII JSON.

    Raises:
        TypeError, ValueError: `value` holds something JSON cannot carry (a set, NaN, ...).
    """
    return _encoder.encode(value).encode("ascii")


def message_from_fields(
    join_ref: object, ref: object, topic: object, event: object, payload: object, error: str
) -> Message:
    """The inbound `Message` of decoded JSON fields: refs are strings or null, topic and event are
    strings, the payload is an object (`Phoenix.Socket.Message.from_map!/1` and the V2 decoder).

    Raises:
        ProtocolError: `error`, when a field has another type.
    """
    if (
        (join_ref is not None and type(join_ref) is not str)
        or (ref is not None and type(ref) is not str)
        or type(topic) is not str
        or type(event) is not str
        or type(payload) is not dict
    ):
        raise ProtocolError(error)
    return Message(topic, event, payload, ref, join_ref)
