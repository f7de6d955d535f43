"""Topic routing (`Phoenix.Socket.channel/3` patterns) and the channel result helpers."""

from __future__ import annotations

import pytest

from whispr.channels import (
    NOREPLY,
    Channel,
    ChannelSocket,
    HandleInResult,
    JoinError,
    JoinOk,
    ReplyResult,
    Router,
    Stop,
    error,
    ok,
    reply,
    reply_error,
    reply_ok,
    stop,
)
from whispr.protocol import Payload


class UserChannel(Channel):
    async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
        return ok()

    async def handle_in(self, event: str, payload: Payload, socket: ChannelSocket) -> HandleInResult:
        return NOREPLY


class LobbyChannel(UserChannel):
    pass


class CatchAll(UserChannel):
    pass


def test_exact_and_splat_patterns_route_in_declaration_order() -> None:
    router = Router([("lobby", LobbyChannel), ("user:*", UserChannel), ("*", CatchAll)])
    assert router.route("lobby") is LobbyChannel
    assert router.route("user:42") is UserChannel
    assert router.route("user:") is UserChannel
    assert router.route("lobby:2") is CatchAll
    assert router.route("") is CatchAll


def test_first_match_wins() -> None:
    router = Router([("user:*", UserChannel), ("user:admin", LobbyChannel)])
    assert router.route("user:admin") is UserChannel


def test_no_match_is_none() -> None:
    router = Router([("user:*", UserChannel), ("lobby", LobbyChannel)])
    assert router.route("conversation:1") is None
    assert router.route("lobby2") is None
    assert router.route("use") is None


@pytest.mark.parametrize("pattern", ["user:*:x", "*user", "a**"])
def test_splat_must_be_last(pattern: str) -> None:
    with pytest.raises(ValueError, match="must end with a single"):
        Router([(pattern, UserChannel)])


def test_result_helpers() -> None:
    assert ok() == JoinOk({})
    assert ok({"a": 1}) == JoinOk({"a": 1})
    assert error({"reason": "unauthorized"}) == JoinError({"reason": "unauthorized"})
    assert reply("alive") == ReplyResult("alive", {})
    assert reply_ok({"pong": True}) == ReplyResult("ok", {"pong": True})
    assert reply_error({"reason": "x"}) == ReplyResult("error", {"reason": "x"})
    assert stop() == Stop("normal", None)
    assert stop("done", reply_ok()) == Stop("done", ReplyResult("ok", {}))


async def test_default_handle_info_ignores_and_terminate_does_nothing() -> None:
    channel = UserChannel()
    socket: ChannelSocket = None  # type: ignore[assignment]  # the defaults never touch it
    assert await channel.handle_info("anything", socket) is NOREPLY
    await channel.terminate("closed", socket)


def test_join_and_handle_in_are_required() -> None:
    class Incomplete(Channel):
        async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
            return ok()

    with pytest.raises(TypeError, match="handle_in"):
        Incomplete()  # type: ignore[abstract]
