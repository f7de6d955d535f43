"""Origin allow-list, per-IP connection cap, client IP behind proxies and the connect rate, through a
real node (contract §1, §5; reliability B6, B7, S1, S12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security_e2e.client import Phx, Refused, in_thread, try_connect
from tests.security_e2e.conftest import audit_records, node_with_control, wait_until

pytestmark = pytest.mark.integration


async def test_origin_allow_list(tmp_path: Path, caplog_all: pytest.LogCaptureFixture) -> None:
    async with node_with_control(tmp_path, allowed_origins=("https://whispr.app",), dev=False) as (rn, control):
        await rn.add_user("alice")
        token = rn.token("alice", "d1")
        refused = [
            "https://evil.example",
            "https://whispr.app.evil.example",
            "null",
            "http://whispr.app",  # scheme differs
            "https://whispr.app:8443",  # port differs
            "https://whispr.app/",  # not a bare origin
            "http://localhost:3000",  # dev-only origin, dev is off
        ]
        for i, origin in enumerate(refused):
            source = f"127.0.4.{i + 1}"
            outcome = await in_thread(try_connect, rn.port, token, source=source, origin=origin)
            assert isinstance(outcome, Refused), f"{origin}: upgraded"
            assert outcome.status == 403, (origin, outcome)
            records = [a for a in audit_records(caplog_all, "connection_attempt") if a["client_ip"] == source]
            assert [(r["outcome"], r["reason"]) for r in records] == [("refused", "bad_origin")], origin

        for source, origin in [("127.0.4.100", "https://whispr.app"), ("127.0.4.101", None)]:
            phx = await in_thread(Phx.connect, rn.port, token, source=source, origin=origin)  # 101
            assert (await in_thread(phx.join, "user:alice"))["status"] == "ok"
            await in_thread(phx.close)
        await in_thread(control.check)


async def test_per_ip_cap_429_other_ips_unaffected_slot_frees_on_close(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    ip, other_ip = "127.0.0.5", "127.0.0.6"
    async with node_with_control(tmp_path) as (rn, control):
        gatekeeper = rn.node.gatekeeper
        assert gatekeeper is not None
        users = [f"u{i}" for i in range(13)]
        for user in users:
            await rn.add_user(user)
        held = [await in_thread(Phx.connect, rn.port, rn.token(users[i], "d1"), source=ip) for i in range(10)]
        assert gatekeeper.slots.held(ip) == 10

        eleventh = await in_thread(try_connect, rn.port, rn.token(users[10], "d1"), source=ip)
        assert isinstance(eleventh, Refused)
        assert eleventh.status == 429
        assert int(eleventh.headers["retry-after"]) >= 1
        assert gatekeeper.slots.held(ip) == 10  # the refusal took no slot
        assert [a["limit"] for a in audit_records(caplog_all, "limit_exceeded")] == ["connections_per_ip"]

        other = await in_thread(Phx.connect, rn.port, rn.token(users[11], "d1"), source=other_ip)  # unaffected
        assert (await in_thread(other.join, "user:u11"))["status"] == "ok"

        for phx in held:  # the 10 from the capped IP still work
            assert (await in_thread(phx.heartbeat))["status"] == "ok"

        await in_thread(held[0].close)
        await wait_until(lambda: gatekeeper.slots.held(ip) == 9)  # released once the server saw the close
        again = await in_thread(Phx.connect, rn.port, rn.token(users[12], "d1"), source=ip)
        assert (await in_thread(again.join, "user:u12"))["status"] == "ok"

        for phx in [*held[1:], other, again]:
            await in_thread(phx.close)
        await wait_until(lambda: gatekeeper.slots.held(ip) == 0 and gatekeeper.slots.held(other_ip) == 0)
        await in_thread(control.check)


async def test_xff_from_untrusted_peer_is_ignored(tmp_path: Path, caplog_all: pytest.LogCaptureFixture) -> None:
    ip = "127.0.0.7"
    async with node_with_control(tmp_path) as (rn, control):  # no trusted proxies
        await rn.add_user("alice")
        held = []
        for i in range(10):
            headers = {"X-Forwarded-For": f"198.51.100.{i + 1}"}  # a different spoofed client each time
            held.append(await in_thread(Phx.connect, rn.port, rn.token("alice", f"d{i}"), source=ip, headers=headers))
        spoofed = await in_thread(
            try_connect, rn.port, rn.token("alice", "d10"), source=ip, headers={"X-Forwarded-For": "198.51.100.77"}
        )
        assert isinstance(spoofed, Refused)
        assert spoofed.status == 429
        attempts = audit_records(caplog_all, "connection_attempt")
        assert {a["client_ip"] for a in attempts if a.get("user_id") == "alice"} == {ip}  # keyed on the peer
        for phx in held:
            await in_thread(phx.close)
        await in_thread(control.check)


async def test_xff_from_trusted_proxy_uses_right_most_untrusted_hop(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    proxy = "127.0.0.8"
    client_a, client_b = "203.0.113.9", "203.0.113.10"
    async with node_with_control(tmp_path, trusted_proxies=("127.0.0.8", "10.0.0.0/8")) as (rn, control):
        gatekeeper = rn.node.gatekeeper
        assert gatekeeper is not None
        await rn.add_user("alice")
        held = []
        for i in range(10):
            # left-most hop forged by the client; then client A; then a trusted inner proxy
            xff = f"1.2.3.{i}, {client_a}, 10.1.2.3"
            held.append(
                await in_thread(
                    Phx.connect, rn.port, rn.token("alice", f"a{i}"), source=proxy, headers={"X-Forwarded-For": xff}
                )
            )
        assert gatekeeper.slots.held(client_a) == 10
        assert gatekeeper.slots.held(proxy) == 0
        eleventh = await in_thread(
            try_connect, rn.port, rn.token("alice", "a10"), source=proxy, headers={"X-Forwarded-For": client_a}
        )
        assert isinstance(eleventh, Refused)
        assert eleventh.status == 429
        # client B through the same proxy has its own bucket
        b = await in_thread(
            Phx.connect, rn.port, rn.token("alice", "b0"), source=proxy, headers={"X-Forwarded-For": client_b}
        )
        assert gatekeeper.slots.held(client_b) == 1
        accepted = [a for a in audit_records(caplog_all, "connection_attempt") if a["outcome"] == "accepted"]
        assert {a["client_ip"] for a in accepted if a.get("user_id") == "alice"} == {client_a, client_b}
        for phx in [*held, b]:
            await in_thread(phx.close)
        await in_thread(control.check)


async def test_connect_rate_429_then_blocked(tmp_path: Path, caplog_all: pytest.LogCaptureFixture) -> None:
    ip = "127.0.0.9"
    async with node_with_control(tmp_path) as (rn, control):
        gatekeeper = rn.node.gatekeeper
        assert gatekeeper is not None
        await rn.add_user("alice")
        token = rn.token("alice", "d1")
        for _ in range(20):  # 20 per 5 min are fine (each closed: the per-IP cap is not what is tested)
            phx = await in_thread(Phx.connect, rn.port, token, source=ip)
            await in_thread(phx.close)
        over = await in_thread(try_connect, rn.port, token, source=ip)
        assert isinstance(over, Refused)
        assert over.status == 429
        assert 290 <= int(over.headers["retry-after"]) <= 300  # blocked for 5 min
        then = await in_thread(try_connect, rn.port, token, source=ip)
        assert isinstance(then, Refused)
        assert then.status == 429
        assert 1 <= int(then.headers["retry-after"]) <= 300

        refusals = [
            a["reason"]
            for a in audit_records(caplog_all, "connection_attempt")
            if a["client_ip"] == ip and a["outcome"] == "refused"
        ]
        assert refusals == ["connect_rate", "blocked"]
        assert [(a["limit"], a["client_ip"]) for a in audit_records(caplog_all, "limit_exceeded")] == [("connect", ip)]
        suspicious = audit_records(caplog_all, "suspicious_activity")
        assert [(a["detector"], a["client_ip"], a["blocked_for"]) for a in suspicious] == [
            ("connection_abuse", ip, 300.0)
        ]
        # another IP, same user: unaffected (the IP is blocked, not the user)
        phx = await in_thread(Phx.connect, rn.port, rn.token("alice", "d2"), source="127.0.0.10")
        assert (await in_thread(phx.join, "user:alice"))["status"] == "ok"
        await in_thread(phx.close)
        await wait_until(lambda: gatekeeper.slots.held(ip) == 0)
        await in_thread(control.check)
