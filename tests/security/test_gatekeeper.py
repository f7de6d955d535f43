"""The connect-time facade and the per-socket guard, on Trio's virtual clock (contract §1, §5, §6)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from tests.security.conftest import SECRET, Seen, claims, hs256
from whispr.gateway.transport import Refuse, UpgradeRequest
from whispr.security.abuse import AbuseConfig, AbuseDetector
from whispr.security.audit import AuditLog
from whispr.security.client_ip import ClientIpResolver
from whispr.security.gatekeeper import Admission, DirectoryUnavailable, Gatekeeper, Refusal, SocketGuard
from whispr.security.limits import Limiter, LimitsConfig, LocalLimiter
from whispr.security.origin import OriginPolicy
from whispr.security.tokens import TokenConfig, TokenVerifier

CONFIG = TokenConfig(secret=SECRET)
TOKEN = hs256(claims(iss=None, aud=None))


def upgrade(peer: str = "203.0.113.7", **headers: str) -> UpgradeRequest:
    return UpgradeRequest(
        path="/socket/websocket",
        query={"vsn": "2.0.0"},
        headers={"user-agent": "phoenix.js/1.8", **headers},
        subprotocols=(),
        peer=(peer, 50_000),
    )


async def everyone_active(user_id: str) -> bool:
    return True


def gatekeeper(
    limiter: Limiter | None = None,
    trusted: tuple[str, ...] = (),
    users: Callable[[str], Awaitable[bool]] = everyone_active,
) -> Gatekeeper:
    limiter = limiter or LocalLimiter()
    audit = AuditLog()
    return Gatekeeper(
        verifier=TokenVerifier(CONFIG),
        origins=OriginPolicy(["https://whispr.app"]),
        client_ips=ClientIpResolver(trusted),
        limiter=limiter,
        detector=AbuseDetector(limiter, audit, AbuseConfig()),
        audit=audit,
        limits=LimitsConfig(),
        users=users,
    )


def retry_after(refuse: Refuse) -> str:
    return dict(refuse.headers)["Retry-After"]


async def admitted(gate: Gatekeeper, request: UpgradeRequest, token: str = TOKEN) -> Admission:
    outcome = await gate.admit(request, token)
    assert isinstance(outcome, Admission), outcome
    return outcome


# --- admit -----------------------------------------------------------------------------------------


async def test_admitted_upgrade_holds_one_slot_until_released(autojump_clock: trio.abc.Clock) -> None:
    gate = gatekeeper()
    admission = await admitted(gate, upgrade(origin="https://whispr.app"))
    assert (admission.token.user_id, admission.token.device_id, admission.client_ip) == (
        "alice",
        "phone-1",
        "203.0.113.7",
    )
    assert gate.slots.held("203.0.113.7") == 1
    admission.release()
    admission.release()  # idempotent: on_closed and an abandoned upgrade may both call it
    assert gate.slots.held("203.0.113.7") == 0


@pytest.mark.parametrize(
    ("origin", "token", "reason"),
    [
        ("https://evil.example", TOKEN, "bad_origin"),
        ("null", TOKEN, "bad_origin"),
        (None, None, "unauthorized"),
        (None, "garbage", "unauthorized"),
        (None, hs256(claims(exp=1)), "unauthorized"),
    ],
)
async def test_origin_and_token_failures_are_403_and_hold_no_slot(
    autojump_clock: trio.abc.Clock, origin: str | None, token: str | None, reason: str
) -> None:
    gate = gatekeeper()
    request = upgrade(origin=origin) if origin else upgrade()
    assert await gate.admit(request, token) == Refuse(403, reason)
    assert gate.slots.held("203.0.113.7") == 0  # reliability S2: the counter is not incremented


async def test_per_ip_cap_counts_live_sockets(autojump_clock: trio.abc.Clock, seen_telemetry: Seen) -> None:
    gate = gatekeeper()
    sockets = [await admitted(gate, upgrade()) for _ in range(10)]  # exactly at the cap
    refused = await gate.admit(upgrade(), TOKEN)  # one over
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.reason, retry_after(refused)) == (429, "connections_per_ip", "10")
    await admitted(gate, upgrade("198.51.100.1"))  # other IPs unaffected
    sockets[0].release()
    await admitted(gate, upgrade())  # a closed socket frees its slot
    assert seen_telemetry == [("limit.exceeded", {"limit": "connections_per_ip"})]


async def test_pending_handshakes_count_towards_the_cap(autojump_clock: trio.abc.Clock) -> None:
    limiter = StallingLimiter()
    gate = gatekeeper(limiter)
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(gate.admit, upgrade(), TOKEN)  # each stalls after taking its slot
        await trio.testing.wait_all_tasks_blocked()
        assert gate.slots.held("203.0.113.7") == 10
        refused = await gate.admit(upgrade(), TOKEN)
        assert isinstance(refused, Refuse)
        assert refused.reason == "connections_per_ip"
        nursery.cancel_scope.cancel()
    assert gate.slots.held("203.0.113.7") == 0  # cancelled handshakes gave their slots back


async def test_connect_rate_refuses_then_blocks_the_ip(autojump_clock: trio.abc.Clock, seen_telemetry: Seen) -> None:
    gate = gatekeeper()
    t0 = trio.current_time()
    for _ in range(20):  # exactly at the limit (each socket closes at once)
        (await admitted(gate, upgrade())).release()
    refused = await gate.admit(upgrade(), TOKEN)  # one over: 429, then blocked for 5 min
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.reason, retry_after(refused)) == (429, "connect_rate", "300")
    await trio.sleep_until(t0 + 299.5)
    refused = await gate.admit(upgrade(), TOKEN)
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.reason, retry_after(refused)) == (429, "blocked", "1")
    await admitted(gate, upgrade("198.51.100.1"))  # other IPs unaffected
    await trio.sleep_until(t0 + 300)  # the block lapses and the first 20 attempts left the window
    await admitted(gate, upgrade())
    assert seen_telemetry == [
        ("limit.exceeded", {"limit": "connect"}),
        ("abuse.detected", {"detector": "connection_abuse"}),
    ]


async def test_spoofed_xff_from_a_direct_client_keys_on_the_peer(autojump_clock: trio.abc.Clock) -> None:
    gate = gatekeeper(trusted=("10.0.0.0/8",))
    outcomes = []
    for _ in range(15):
        spoof = f"{random.randrange(1, 224)}.{random.randrange(256)}.{random.randrange(256)}.1"
        outcomes.append(await gate.admit(upgrade(**{"x-forwarded-for": spoof}), TOKEN))
    assert sum(isinstance(o, Admission) for o in outcomes) == 10  # reliability B7: 10 of N


async def test_behind_a_trusted_proxy_each_client_has_its_own_budget(autojump_clock: trio.abc.Clock) -> None:
    gate = gatekeeper(trusted=("10.0.0.0/8",))
    for client in ["198.51.100.1", "198.51.100.2"]:
        for _ in range(10):
            await admitted(gate, upgrade("10.0.0.2", **{"x-forwarded-for": f"6.6.6.6, {client}"}))
        refused = await gate.admit(upgrade("10.0.0.2", **{"x-forwarded-for": client}), TOKEN)
        assert isinstance(refused, Refuse)
        assert refused.reason == "connections_per_ip"
    assert gate.slots.held("10.0.0.2") == 0


# --- the socket guard --------------------------------------------------------------------------------


async def guard_for(gate: Gatekeeper) -> SocketGuard:
    return gate.guard(await admitted(gate, upgrade()))


async def test_message_rate_then_spam_block(autojump_clock: trio.abc.Clock, seen_telemetry: Seen) -> None:
    gate = gatekeeper()
    guard = await guard_for(gate)
    for _ in range(100):  # exactly at the limit
        assert await guard.check_message("hi") is None
    assert await guard.check_message("hi") == Refusal("rate_limit_exceeded", 600)  # socket kept
    assert await guard.check_message("hi") == Refusal("rate_limit_exceeded", 600)
    blocked = await guard.check_message("hi")  # third refusal in a row: spam
    assert blocked == Refusal("blocked", 300_000, 1008)  # contract §5: spam → blocked, close 1008
    assert blocked.response() == {"reason": "blocked", "retry_after_ms": 300_000}
    refused = await gate.admit(upgrade("198.51.100.9"), TOKEN)  # the user, not the IP, is blocked
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.reason) == (429, "blocked")
    assert seen_telemetry[-2:] == [
        ("limit.exceeded", {"limit": "message"}),
        ("abuse.detected", {"detector": "message_spam"}),
    ]


async def spam_until_blocked(guard: SocketGuard, accepted: int) -> None:
    """`accepted` messages pass (what is left of the user's budget), then 3 refusals in a row block the user."""
    for _ in range(accepted):
        assert await guard.check_message("hi") is None
    refusals = [await guard.check_message("hi") for _ in range(3)]
    assert refusals[-1] == Refusal("blocked", 300_000, 1008)


async def test_a_block_refuses_every_send_of_the_users_other_live_sockets(autojump_clock: trio.abc.Clock) -> None:
    """contract.md §5 "spam": the block holds for the user, so a socket opened before it is refused
    `blocked` (close 1008) on its next send, even once the message budget has refilled."""
    gate = gatekeeper()
    spammer, bystander = await guard_for(gate), await guard_for(gate)
    assert await bystander.check_message("hi") is None
    await spam_until_blocked(spammer, accepted=99)
    await trio.sleep(60)  # the budget is full again; the block has 240 s left
    assert await bystander.check_message("hi") == Refusal("blocked", 240_000, 1008)
    await trio.sleep(240)
    assert await bystander.check_message("hi") is None  # the block lapsed


async def test_an_accepted_message_resets_the_spam_streak(autojump_clock: trio.abc.Clock) -> None:
    guard = await guard_for(gatekeeper())
    t0 = trio.current_time()
    for _ in range(100):
        await guard.check_message("hi")
    assert (await guard.check_message("hi")) == Refusal("rate_limit_exceeded", 600)
    assert (await guard.check_message("hi")) == Refusal("rate_limit_exceeded", 600)
    await trio.sleep_until(t0 + 0.6)
    assert await guard.check_message("hi") is None
    assert (await guard.check_message("hi")) == Refusal("rate_limit_exceeded", 600)
    assert (await guard.check_message("hi")) == Refusal("rate_limit_exceeded", 600)  # not blocked


async def test_message_size_counts_bytes_and_spends_a_token(autojump_clock: trio.abc.Clock) -> None:
    guard = await guard_for(gatekeeper())
    assert await guard.check_message("😀" * 2_500) is None  # exactly 10,000 bytes
    assert await guard.check_message("😀" * 2_501) == Refusal("message_too_large")
    assert Refusal("message_too_large").response() == {"reason": "message_too_large"}
    for _ in range(98):
        assert await guard.check_message("x") is None
    assert await guard.check_message("x") == Refusal("rate_limit_exceeded", 600)  # the oversize one counted


async def test_join_rate_then_channel_hopping_block(autojump_clock: trio.abc.Clock, seen_telemetry: Seen) -> None:
    gate = gatekeeper()
    guard = await guard_for(gate)
    other_socket = await guard_for(gate)
    for _ in range(30):  # exactly at the limit
        assert await guard.check_join() is None
    assert await other_socket.check_join() is None  # per socket
    assert await guard.check_join() == Refusal("rate_limit_exceeded", 300_000, 1008)
    refused = await gate.admit(upgrade(), TOKEN)
    assert isinstance(refused, Refuse)
    assert refused.reason == "blocked"
    assert seen_telemetry == [
        ("limit.exceeded", {"limit": "join"}),
        ("abuse.detected", {"detector": "channel_hopping"}),
    ]


async def test_joins_slide_over_the_minute(autojump_clock: trio.abc.Clock) -> None:
    guard = await guard_for(gatekeeper())
    t0 = trio.current_time()
    for _ in range(29):
        assert await guard.check_join() is None
    await trio.sleep_until(t0 + 30)
    assert await guard.check_join() is None  # 30 in (now - 60, now]
    await trio.sleep_until(t0 + 60)  # the first 29 left the window
    for _ in range(29):
        assert await guard.check_join() is None


class StallingLimiter(LocalLimiter):
    """Stalls forever on the user-block check: an admission caught mid-way."""

    async def blocked_for(self, subject: str) -> float:
        if subject.startswith("user:"):
            await trio.sleep_forever()
        return await super().blocked_for(subject)


async def test_inactive_user_is_refused_403_and_audited_as_refused(caplog: pytest.LogCaptureFixture) -> None:
    async def nobody_active(user_id: str) -> bool:
        return False

    gate = gatekeeper(users=nobody_active)
    refused = await gate.admit(upgrade("198.51.100.20"), TOKEN)
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.reason) == (403, "inactive_user")
    assert gate.slots.held("198.51.100.20") == 0
    (record,) = [r for r in caplog.records if r.name == "whispr.audit"]
    assert record.audit["outcome"] == "refused"  # type: ignore[attr-defined]
    assert record.audit["reason"] == "inactive_user"  # type: ignore[attr-defined]


async def test_user_directory_down_refuses_503_with_retry_after() -> None:
    async def directory_down(user_id: str) -> bool:
        raise DirectoryUnavailable("store down")

    gate = gatekeeper(users=directory_down)
    refused = await gate.admit(upgrade("198.51.100.21"), TOKEN)
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.reason) == (503, "user_directory_unavailable")
    assert retry_after(refused) == "5"
    assert gate.slots.held("198.51.100.21") == 0
