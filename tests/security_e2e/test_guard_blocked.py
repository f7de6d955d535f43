"""Unit test of the `SocketGuard.check_join` fix: a blocked user's joins are refused with `blocked`.

(The e2e counterpart is `test_socket_limits.py::test_blocked_user_other_live_socket_refused_on_join`.)
"""

from __future__ import annotations

import trio
import trio.testing

from tests.security.conftest import SECRET, claims, hs256
from whispr.gateway.transport import UpgradeRequest
from whispr.security.abuse import AbuseDetector
from whispr.security.audit import AuditLog
from whispr.security.client_ip import ClientIpResolver
from whispr.security.gatekeeper import Admission, Gatekeeper, Refusal
from whispr.security.limits import LimitsConfig, LocalLimiter
from whispr.security.origin import OriginPolicy
from whispr.security.tokens import TokenConfig, TokenVerifier


def upgrade(peer: str) -> UpgradeRequest:
    return UpgradeRequest(path="/socket/websocket", query={}, headers={}, subprotocols=(), peer=(peer, 50_000))


async def everyone_active(user_id: str) -> bool:
    return True


async def test_a_blocked_user_is_refused_on_join_with_blocked(autojump_clock: trio.abc.Clock) -> None:
    limiter = LocalLimiter()
    audit = AuditLog()
    gate = Gatekeeper(
        verifier=TokenVerifier(TokenConfig(secret=SECRET)),
        origins=OriginPolicy(()),
        client_ips=ClientIpResolver(()),
        limiter=limiter,
        detector=AbuseDetector(limiter, audit),
        audit=audit,
        limits=LimitsConfig(),
        users=everyone_active,
    )
    token = hs256(claims(iss=None, aud=None))
    spammer = await gate.admit(upgrade("203.0.113.1"), token)
    other = await gate.admit(upgrade("203.0.113.2"), token)
    assert isinstance(spammer, Admission)
    assert isinstance(other, Admission)
    spam, bystander = gate.guard(spammer), gate.guard(other)
    assert await bystander.check_join() is None
    for _ in range(100):
        assert await spam.check_message("x") is None
    for _ in range(3):
        refusal = await spam.check_message("x")
    assert refusal is not None
    assert refusal.close_code == 1008  # blocked for 300 s
    await trio.sleep(100)
    assert await bystander.check_join() == Refusal("blocked", 200_000, 1008)
    await trio.sleep(200)
    assert await bystander.check_join() is None  # the block lapsed
