"""A real node with a control set, token factories and audit-record capture for the e2e security tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.jwt_factory import make_claims, sign_hs256
from tests.node import SECRET, RunningNode, running_node
from tests.security_e2e.client import CONTROL_IPS, ControlSet, Phx, in_thread
from whispr.security.audit import AUDIT_LOGGER


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Trio's clock for the whole test (node included), running at real speed until a test freezes
    it (`rate = 0`) to make rate limits exact, or jumps it past a limit's window."""
    return trio.testing.MockClock(rate=1.0)


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog at DEBUG on every logger."""
    caplog.set_level(logging.DEBUG)
    return caplog


def audit_records(caplog: pytest.LogCaptureFixture, event: str | None = None) -> list[dict[str, Any]]:
    """The structured `audit` fields of every `whispr.audit` record (of one event type)."""
    found = [r.audit for r in caplog.records if r.name == AUDIT_LOGGER]  # type: ignore[attr-defined]
    return [a for a in found if event is None or a["event"] == event]


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER]


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims (issuer and audience of the test node, device d1), expiring in an hour; None drops a claim."""
    return make_claims("d1", overrides)


def hs256(payload: dict[str, Any], key: bytes = SECRET.encode(), headers: dict[str, Any] | None = None) -> str:
    return sign_hs256(payload, key, headers)


async def start_control(rn: RunningNode, mint: Callable[[str, str], str] | None = None) -> ControlSet:
    """5 healthy sockets of users ctl0..ctl4 from 127.0.0.200..204 on one conversation, one round exchanged.

    `mint(user, device)` makes their tokens (default: the node's HS256 `token`)."""
    mint = mint or rn.token
    users = [f"ctl{i}" for i in range(len(CONTROL_IPS))]
    for user in users:
        await rn.add_user(user)
    assert rn.node.store is not None
    conversation_id = await rn.node.store.create_conversation(users)
    control = ControlSet(rn.port, conversation_id)
    for user, ip in zip(users, CONTROL_IPS, strict=True):
        phx = await in_thread(Phx.connect, rn.port, mint(user, "ctl-device"), source=ip)
        control.sockets.append(phx)
        reply = await in_thread(phx.join, f"conversation:{conversation_id}")
        assert reply["status"] == "ok", reply
    await in_thread(control.exchange)
    return control


@asynccontextmanager
async def node_with_control(
    tmp_path: Path, mint: Callable[[str, str], str] | None = None, **overrides: Any
) -> AsyncIterator[tuple[RunningNode, ControlSet]]:
    """A real node (tests/node.py) and its control set; every socket is closed on exit."""
    async with running_node(tmp_path, **overrides) as rn:
        control = await start_control(rn, mint)
        try:
            yield rn, control
        finally:
            await in_thread(control.close)


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a node-state predicate (no event exists for it) until it holds; fail after `within` s."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)
