"""V1 and V2 serializers: wire shapes from protocol.md §2, and the decode contract.

Contract (websockets' fuzzing rule): any `str` or `bytes` either decodes to a `Message` or raises
`ProtocolError`, never anything else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whispr.protocol import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_UNSUPPORTED_DATA,
    V1,
    V2,
    Broadcast,
    Message,
    ProtocolError,
    Reply,
    serializer_for_vsn,
)

SERIALIZERS = [V1, V2]


def decode_json(data: bytes) -> Any:
    return json.loads(data)


# --- V2 text ------------------------------------------------------------------------------------


def test_v2_decodes_the_five_element_array() -> None:
    message = V2.decode('["1", "2", "room:1", "new_msg", {"body": "hi"}]')
    assert message == Message("room:1", "new_msg", {"body": "hi"}, ref="2", join_ref="1")


def test_v2_null_refs_stay_null() -> None:
    message = V2.decode('[null, "7", "phoenix", "heartbeat", {}]')
    assert message.join_ref is None
    assert message.ref == "7"


def test_v2_extra_elements_are_ignored() -> None:
    message = V2.decode('["1", "2", "t", "e", {}, "extra", 5]')
    assert message == Message("t", "e", {}, "2", "1")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"topic": "t"}',
        '["1", "2", "t", "e"]',
        '["1", "2", "t", "e", []]',
        '["1", "2", "t", "e", "payload"]',
        '["1", 2, "t", "e", {}]',
        '[1, "2", "t", "e", {}]',
        '["1", "2", 3, "e", {}]',
        '["1", "2", "t", null, {}]',
        '["1", "2", "t", "e", {"x": NaN}]',
        '["1", "2", "t", "e", {"x": Infinity}]',
        '["1", "2", "t", "e", {"x": 1e999}]',
        '["1", "2", "t", "e", {"x": ' + "9" * 5000 + "}]",
        "[" * 100_000 + "]" * 100_000,
        '["1", "2", "t", "e", {}]garbage',
        "",
    ],
)
def test_v2_rejects_malformed_text_with_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        V2.decode(text)
    assert info.value.close_code == CLOSE_INVALID_PAYLOAD


def test_v2_encodes_a_reply() -> None:
    reply = Reply("room:1", "ok", {"id": 3}, ref="5", join_ref="1")
    assert decode_json(V2.encode(reply)) == ["1", "5", "room:1", "phx_reply", {"status": "ok", "response": {"id": 3}}]


def test_v2_encodes_a_push_with_join_ref_and_null_ref() -> None:
    push = Message("room:1", "presence_state", {}, ref=None, join_ref="1")
    assert decode_json(V2.encode(push)) == ["1", None, "room:1", "presence_state", {}]


def test_v2_encodes_a_broadcast_with_null_refs() -> None:
    assert decode_json(V2.encode(Broadcast("room:1", "new_msg", {"a": 1}))) == [
        None,
        None,
        "room:1",
        "new_msg",
        {"a": 1},
    ]


def test_encoding_is_compact_ascii() -> None:
    data = V2.encode(Broadcast("t", "e", {"text": "héllo 🎉", "lone": "\ud800"}))
    assert b", " not in data
    assert b": " not in data
    assert data.isascii()
    assert decode_json(data)[4] == {"text": "héllo 🎉", "lone": "\ud800"}


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.vsn)
@pytest.mark.parametrize("payload", [{"x": float("nan")}, {"x": {1, 2}}, ["not", "a", "dict"]])
def test_unencodable_payloads_raise_for_the_sender(serializer: Any, payload: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        serializer.encode(Broadcast("t", "e", payload))


# --- V2 binary (protocol.md §2.3) ---------------------------------------------------------------


def client_binary_push(join_ref: bytes, ref: bytes, topic: bytes, event: bytes, data: bytes) -> bytes:
    return bytes((0, len(join_ref), len(ref), len(topic), len(event))) + join_ref + ref + topic + event + data


def test_v2_decodes_a_client_binary_push() -> None:
    frame = client_binary_push(b"1", b"12", b"room:\xc3\xa9", b"upload", b"\x00\xffraw")
    assert V2.decode(frame) == Message("room:é", "upload", b"\x00\xffraw", ref="12", join_ref="1")


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x01\x01",
        bytes((1, 0, 0, 0, 0)),
        bytes((2, 0, 0, 0, 0)),
        bytes((0, 5, 0, 0, 0)) + b"abc",
        bytes((0, 1, 0, 0, 0)) + b"\xff",
    ],
)
def test_v2_rejects_malformed_binary_frames(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        V2.decode(frame)
    assert info.value.close_code == CLOSE_INVALID_PAYLOAD


def test_v2_encodes_a_binary_reply_as_kind_1() -> None:
    data = V2.encode(Reply("t", "ok", b"DATA", ref="12", join_ref="1"))
    assert data == bytes((1, 1, 2, 1, 2)) + b"1" + b"12" + b"t" + b"ok" + b"DATA"


def test_v2_encodes_a_binary_push_as_kind_0_without_ref() -> None:
    data = V2.encode(Message("t", "ev", b"DATA", ref=None, join_ref="1"))
    assert data == bytes((0, 1, 1, 2)) + b"1" + b"t" + b"ev" + b"DATA"


def test_v2_encodes_a_binary_broadcast_as_kind_2() -> None:
    assert V2.encode(Broadcast("t", "ev", b"DATA")) == bytes((2, 1, 2)) + b"t" + b"ev" + b"DATA"


def test_v2_binary_null_join_ref_is_empty() -> None:
    assert V2.encode(Reply("t", "ok", b"", ref="1", join_ref=None)) == bytes((1, 0, 1, 1, 2)) + b"1tok"


def test_v2_binary_header_fields_are_limited_to_255_bytes() -> None:
    with pytest.raises(ValueError, match="255"):
        V2.encode(Broadcast("t" * 256, "e", b""))


# --- V1 (protocol.md §2.1) ----------------------------------------------------------------------


def test_v1_decodes_an_object_with_optional_join_ref() -> None:
    assert V1.decode('{"topic": "t", "event": "e", "payload": {}, "ref": "1"}') == Message("t", "e", {}, "1", None)
    assert V1.decode('{"topic": "t", "event": "e", "payload": {}, "ref": null, "join_ref": "3", "x": 1}') == Message(
        "t", "e", {}, None, "3"
    )


@pytest.mark.parametrize(
    "text",
    [
        '["1", "2", "t", "e", {}]',
        '{"topic": "t", "event": "e", "payload": {}}',
        '{"topic": "t", "event": "e", "ref": "1"}',
        '{"topic": "t", "event": "e", "payload": [], "ref": "1"}',
        '{"topic": 1, "event": "e", "payload": {}, "ref": "1"}',
        '{"topic": "t", "event": "e", "payload": {}, "ref": "1", "join_ref": 3}',
        "{",
    ],
)
def test_v1_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        V1.decode(text)
    assert info.value.close_code == CLOSE_INVALID_PAYLOAD


def test_v1_refuses_binary_frames_with_1003() -> None:
    with pytest.raises(ProtocolError) as info:
        V1.decode(b"\x00\x00\x00\x00\x00")
    assert info.value.close_code == CLOSE_UNSUPPORTED_DATA


@pytest.mark.parametrize(
    "message",
    [
        Reply("t", "ok", {"a": 1}, ref="2", join_ref="1"),
        Message("t", "push", {"a": 1}, ref=None, join_ref="1"),
        Message("t", "phx_close", {}, ref="1", join_ref="1"),
        Broadcast("t", "b", {"a": 1}),
    ],
    ids=["reply", "push", "close", "broadcast"],
)
def test_v1_outbound_never_has_join_ref(message: Any) -> None:
    decoded = decode_json(V1.encode(message))
    assert set(decoded) == {"topic", "event", "payload", "ref"}


def test_v1_reply_and_broadcast_shapes() -> None:
    assert decode_json(V1.encode(Reply("t", "error", {"reason": "x"}, ref="2", join_ref="1"))) == {
        "topic": "t",
        "event": "phx_reply",
        "payload": {"status": "error", "response": {"reason": "x"}},
        "ref": "2",
    }
    assert decode_json(V1.encode(Broadcast("t", "b", {})))["ref"] is None


def test_v1_cannot_encode_binary() -> None:
    with pytest.raises(TypeError):
        V1.encode(Broadcast("t", "b", b"raw"))


# --- vsn negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vsn", "expected"),
    [("2.0.0", V2), ("2.0.7", V2), ("1.0.0", V1), ("1.0.3", V1)],
)
def test_vsn_matches_like_phoenix_pessimistic_requirements(vsn: str, expected: Any) -> None:
    assert serializer_for_vsn(vsn) is expected


@pytest.mark.parametrize("vsn", ["9.9.9", "2.1.0", "1.1.0", "3.0.0", "2.0", "2", "", "02.0.0", "2.0.0-rc.1", "２.0.0"])
def test_unknown_vsn_has_no_serializer(vsn: str) -> None:
    assert serializer_for_vsn(vsn) is None


# --- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=5)
refs = st.none() | st.text()


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.vsn)
@given(data=st.text() | st.binary())
def test_any_input_decodes_or_raises_protocol_error(serializer: Any, data: str | bytes) -> None:
    try:
        message = serializer.decode(data)
    except ProtocolError:
        return
    assert isinstance(message, Message)


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.vsn)
@given(
    data=st.builds(
        json.dumps,
        st.lists(json_values, max_size=7)
        | st.dictionaries(st.sampled_from(["topic", "event", "payload", "ref", "join_ref"]), json_values),
    )
)
def test_near_miss_json_decodes_or_raises_protocol_error(serializer: Any, data: str) -> None:
    try:
        message = serializer.decode(data)
    except ProtocolError:
        return
    assert isinstance(message.payload, dict)


@given(join_ref=refs, ref=refs, topic=st.text(), event=st.text(), payload=json_objects)
def test_v2_round_trip(join_ref: str | None, ref: str | None, topic: str, event: str, payload: dict[str, Any]) -> None:
    message = Message(topic, event, payload, ref, join_ref)
    assert V2.decode(V2.encode(message).decode()) == message


@given(
    join_ref=st.text(max_size=60),
    ref=st.text(max_size=60),
    topic=st.text(max_size=60),
    event=st.text(max_size=60),
    data=st.binary(),
)
def test_v2_binary_push_round_trip(join_ref: str, ref: str, topic: str, event: str, data: bytes) -> None:
    fields = [s.encode("utf-8", "surrogatepass") for s in (join_ref, ref, topic, event)]
    try:
        for f in fields:
            f.decode()
    except UnicodeDecodeError:
        return  # lone surrogates have no UTF-8 form; phoenix.js cannot send them either
    assert V2.decode(client_binary_push(fields[0], fields[1], fields[2], fields[3], data)) == Message(
        topic, event, data, ref, join_ref
    )


@given(ref=refs, topic=st.text(), event=st.text(), payload=json_objects)
def test_v1_round_trip_without_join_ref(ref: str | None, topic: str, event: str, payload: dict[str, Any]) -> None:
    message = Message(topic, event, payload, ref, "ignored")
    assert V1.decode(V1.encode(message).decode()) == Message(topic, event, payload, ref, None)
