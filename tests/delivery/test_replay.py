"""Where a replay starts and whether it recovered everything."""

from __future__ import annotations

import pytest

from whispr.delivery.replay import check_page_args, replay_start
from whispr.delivery.store import Message, iso_ms


@pytest.mark.parametrize(
    ("after", "head", "floor", "expected"),
    [
        (0, 0, None, (1, True)),  # nothing ever sent
        (0, 5, 1, (1, True)),  # everything retained
        (3, 5, 1, (4, True)),
        (0, 5, 3, (3, False)),  # 1 and 2 expired
        (2, 5, 3, (3, True)),  # the device had everything that expired
        (5, 5, None, (6, True)),  # caught up, all expired
        (2, 5, None, (6, False)),  # behind, all expired
        (7, 5, 1, (8, False)),  # a position the store never issued
    ],
)
def test_replay_start(after: int, head: int, floor: int | None, expected: tuple[int, bool]) -> None:
    assert replay_start(after, head, floor) == expected


def test_page_arguments_are_checked() -> None:
    check_page_args(0, 1)
    with pytest.raises(ValueError, match="after_seq"):
        check_page_args(-1, 1)
    with pytest.raises(ValueError, match="limit"):
        check_page_args(0, 0)


def test_message_payload_is_the_contract_shape() -> None:
    message = Message("id", "c", 3, "u", "d", "k", "text", "hi", {"a": 1}, None, 1_700_000_000_007)
    assert message.payload() == {
        "id": "id",
        "conversation_id": "c",
        "seq": 3,
        "sender_id": "u",
        "sender_device_id": "d",
        "client_message_id": "k",
        "type": "text",
        "content": "hi",
        "metadata": {"a": 1},
        "reply_to": None,
        "inserted_at": "2023-11-14T22:13:20.007Z",
    }
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    # The per-second cache must not leak one second's text into another, either side of the epoch.
    assert [iso_ms(ms) for ms in (999, 1000, 1999, -1, -1000, -1001)] == [
        "1970-01-01T00:00:00.999Z",
        "1970-01-01T00:00:01.000Z",
        "1970-01-01T00:00:01.999Z",
        "1969-12-31T23:59:59.999Z",
        "1969-12-31T23:59:59.000Z",
        "1969-12-31T23:59:58.999Z",
    ]
