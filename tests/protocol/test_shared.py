"""`SharedFrames`: encode once, write many, and the spliced bytes equal the serializer's own."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whispr.protocol import V1, V2, Message, Serializer, SharedFrames

SERIALIZERS = [V1, V2]
HOLE_TEXTS = ["\x00whispr:topic\x00", "\x00whispr:value\x00"]  # a payload may contain them

json_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.sampled_from(HOLE_TEXTS)
payloads = st.dictionaries(st.text() | st.sampled_from(HOLE_TEXTS), json_scalars | st.lists(json_scalars), max_size=6)
values = st.integers(min_value=0, max_value=2**63) | st.booleans()


class Counting:
    """A serializer that counts its encodes."""

    def __init__(self, inner: Serializer) -> None:
        self.inner = inner
        self.vsn = inner.vsn
        self.encodes = 0

    def decode(self, data: str | bytes) -> Message:
        return self.inner.decode(data)

    def encode(self, message: Any) -> bytes:
        self.encodes += 1
        return self.inner.encode(message)


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=["v1", "v2"])
@given(
    base=payloads,
    pushes=st.lists(st.tuples(st.text(), values, st.sampled_from([None, "1", "7"])), min_size=1, max_size=6),
)
def test_spliced_frames_are_the_serializers_bytes(
    serializer: Serializer, base: dict[str, Any], pushes: list[tuple[str, int, str | None]]
) -> None:
    frames = SharedFrames(splice="inbox_seq")
    for topic, value, join_ref in pushes:
        payload = {**base, "inbox_seq": value}
        expected = serializer.encode(Message(topic, "new_message", payload, None, join_ref))
        assert frames.frame(serializer, topic, "new_message", payload, join_ref, bytes) == expected


def test_spliced_pushes_encode_once_per_join_ref_and_count_every_write() -> None:
    counting = Counting(V2)
    frames = SharedFrames(splice="inbox_seq")
    for user in range(10):
        for join_ref in ("1", "2"):
            frames.frame(counting, f"user:{user}", "new_message", {"body": "hi", "inbox_seq": user}, join_ref, bytes)

    assert counting.encodes == 2  # one template per join_ref
    assert [writes for _, writes in frames.uses()] == [10, 10]


def test_plain_pushes_encode_once_per_key_and_count_every_write() -> None:
    counting = Counting(V2)
    frames = SharedFrames()
    payload = {"body": "hi"}
    for join_ref in ("1", "1", "1", "2"):
        frames.frame(counting, "conversation:c", "new_message", payload, join_ref, bytes)

    assert counting.encodes == 2
    one = len(V2.encode(Message("conversation:c", "new_message", payload, None, "1")))
    assert frames.uses() == [(one, 3), (one, 1)]


def test_a_payload_holding_a_hole_is_encoded_in_full() -> None:
    counting = Counting(V1)
    frames = SharedFrames(splice="inbox_seq")
    payload = {"body": HOLE_TEXTS[0], "inbox_seq": 1}
    for topic in ("user:a", "user:b"):
        expected = V1.encode(Message(topic, "new_message", payload, None, "1"))
        assert frames.frame(counting, topic, "new_message", payload, "1", bytes) == expected

    assert counting.encodes == 3  # the refused template, then each push in full
