"""Server frames decode as RFC 6455 frames with the payload intact, at every length boundary."""

from __future__ import annotations

import wsproto
from hypothesis import given
from hypothesis import strategies as st
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from whispr.gateway.frames import binary_frame, text_frame


def _client_receiving(frames: bytes) -> list[object]:
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="x", target="/")))
    (request,) = server.events()
    assert isinstance(request, Request)
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    client.receive_data(frames)
    return list(client.events())


@given(st.text(max_size=70_000))
def test_text_frame_round_trips(text: str) -> None:
    (event,) = _client_receiving(text_frame(text.encode()))
    assert isinstance(event, TextMessage)
    assert event.data == text


@given(st.sampled_from([0, 125, 126, 65535, 65536]))
def test_binary_frame_length_boundaries(n: int) -> None:
    (event,) = _client_receiving(binary_frame(b"x" * n))
    assert isinstance(event, BytesMessage)
    assert len(event.data) == n
