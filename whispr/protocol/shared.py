"""Encode once, write many: the frames of one stream entry pushed to many channel instances (issue 6).

Live delivery (`whispr.delivery.live`) hands each committed message to every device joined to its
`conversation:` topic and to the `user:` topic of every recipient. Encoding is most of a push's
cost, so the pushes of one entry share a `SharedFrames`:

* `SharedFrames()`: every push carries the same event and payload on the same topic (one
  conversation entry): the serializer runs once per (serializer, join_ref, topic).
* `SharedFrames(splice=key)`: pushes of the same event on different topics whose payloads are equal
  except for the integer value of `key` (one message on its recipients' `user:` topics, `key`
  being `inbox_seq`): the serializer runs once per (serializer, join_ref), on the message with
  the topic and that value left as holes, and each push fills them in. The result is byte for byte
  what the serializer gives for that push (JSON is a concatenation of its parts, and both
  serializers encode the topic and the integer with the one `_json` encoder). If a hole cannot be
  found exactly once, in order (a payload that happens to contain the hole's text), or the value is
  not an int, the push is encoded in full: splicing is an optimisation, never a change of bytes.

The frame written (the encoding wrapped in the caller's framing) is built once per topic and
shared by that topic's devices. Every `frame` call counts one write of its encoding; `uses()` gives
each encoding's (size, writes), so the owner emits one MESSAGE_SENT per encoding rather than one
per socket (the metrics read `count`). Pure: no I/O; payloads are never mutated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._json import dumps
from .message import Message
from .serializer import Serializer

_TOPIC_HOLE = "\x00whispr:topic\x00"
_VALUE_HOLE = "\x00whispr:value\x00"
_TOPIC_BYTES = dumps(_TOPIC_HOLE)
_VALUE_BYTES = dumps(_VALUE_HOLE)

Template = tuple[bytes, bytes, bytes]
"""An encoding cut at its holes: before the topic, between the topic and the value, after the value."""


class SharedFrames:
    """The frames of one entry's pushes (see the module docstring). Not thread-safe."""

    __slots__ = ("_frames", "_splice", "_templates", "_uses")

    def __init__(self, splice: str | None = None) -> None:
        self._splice = splice
        # (serializer, join_ref, topic, type and value of the spliced key) -> the frame written.
        self._frames: dict[tuple[object, ...], bytes] = {}
        # (serializer, join_ref) -> template, or None when this payload cannot be spliced.
        self._templates: dict[tuple[object, ...], Template | None] = {}
        # encoding key -> [size of its first encoding, writes]: (serializer, join_ref, topic) for
        # plain pushes, (serializer, join_ref) for spliced ones.
        self._uses: dict[tuple[object, ...], list[int]] = {}

    def frame(
        self,
        serializer: Serializer,
        topic: str,
        event: str,
        payload: dict[str, Any],
        join_ref: str | None,
        wrap: Callable[[bytes], bytes],
    ) -> bytes:
        """`wrap(serializer.encode(Message(topic, event, payload, None, join_ref)))`, encoded at
        most once per key (module docstring) and wrapped once per topic; one more write counted.
        `wrap` (the socket's framing) must be the same for every call sharing this object.

        Raises:
            TypeError, ValueError: the payload cannot be encoded (as `Serializer.encode`).
        """
        value = None if self._splice is None else payload[self._splice]
        key = (serializer, join_ref, topic, type(value), value)  # the type: True == 1, but not its bytes
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = wrap(self._encode(serializer, topic, event, payload, join_ref, value))
        self._uses[(serializer, join_ref) if self._splice is not None else (serializer, join_ref, topic)][1] += 1
        return frame

    def uses(self) -> list[tuple[int, int]]:
        """(size in bytes of its first encoding, writes) per encoding, in build order (spliced
        frames differ from that size by the lengths of their topic and value)."""
        return [(size, writes) for size, writes in self._uses.values()]

    def _encode(
        self,
        serializer: Serializer,
        topic: str,
        event: str,
        payload: dict[str, Any],
        join_ref: str | None,
        value: object,
    ) -> bytes:
        if self._splice is None:
            data = serializer.encode(Message(topic, event, payload, None, join_ref))
            self._uses[(serializer, join_ref, topic)] = [len(data), 0]
            return data
        key = (serializer, join_ref)
        if key in self._templates:
            template = self._templates[key]
        else:
            template = self._templates[key] = _template(serializer, event, payload, join_ref, self._splice)
        if template is None or type(value) is not int:
            data = serializer.encode(Message(topic, event, payload, None, join_ref))
        else:
            before, between, after = template
            data = b"".join((before, dumps(topic), between, str(value).encode(), after))
        self._uses.setdefault(key, [len(data), 0])
        return data


def _template(
    serializer: Serializer, event: str, payload: dict[str, Any], join_ref: str | None, key: str
) -> Template | None:
    data = serializer.encode(Message(_TOPIC_HOLE, event, {**payload, key: _VALUE_HOLE}, None, join_ref))
    if data.count(_TOPIC_BYTES) != 1 or data.count(_VALUE_BYTES) != 1:
        return None
    before, _, rest = data.partition(_TOPIC_BYTES)
    between, found, after = rest.partition(_VALUE_BYTES)
    if not found:
        return None  # the value comes before the topic in this serializer's layout
    return before, between, after
