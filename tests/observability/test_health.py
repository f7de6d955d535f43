from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from whispr.observability.health import CheckResult, Readiness, ReadinessReport, health


async def passing() -> CheckResult:
    return CheckResult(True, "reachable")


async def failing() -> CheckResult:
    return CheckResult(False, "canary 12s old")


async def hanging() -> bool:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def raising() -> bool:
    raise ConnectionRefusedError("redis://:password@10.0.0.1 refused")


def test_health_is_always_ok() -> None:
    assert health() == (200, b'{"status":"ok"}')


async def test_all_checks_pass_gives_200() -> None:
    status, body = await Readiness({"store": passing, "tree": passing}).ready()
    assert status == 200
    assert json.loads(body) == {
        "status": "ready",
        "draining": False,
        "checks": {"store": {"ok": True, "detail": "reachable"}, "tree": {"ok": True, "detail": "reachable"}},
    }


async def test_a_failing_check_gives_503_and_is_named() -> None:
    status, body = await Readiness({"store": passing, "pubsub_canary": failing}).ready()
    assert status == 503
    document = json.loads(body)
    assert document["status"] == "unready"
    assert document["checks"]["pubsub_canary"] == {"ok": False, "detail": "canary 12s old"}
    assert document["checks"]["store"]["ok"] is True


async def test_a_hanging_check_fails_within_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    readiness = Readiness({"store": hanging, "tree": passing}, timeout=2.0)
    started = trio.current_time()
    status, body = await readiness.ready()
    assert trio.current_time() - started == pytest.approx(2.0)
    assert status == 503
    assert json.loads(body)["checks"]["store"] == {"ok": False, "detail": "timed out after 2s"}


async def test_a_raising_check_fails_without_leaking_its_message() -> None:
    status, body = await Readiness({"store": raising}).ready()
    assert status == 503
    assert json.loads(body)["checks"]["store"] == {"ok": False, "detail": "raised ConnectionRefusedError"}
    assert b"password" not in body


async def test_bare_bool_results() -> None:
    async def yes() -> bool:
        return True

    async def no() -> bool:
        return False

    report = await Readiness({"yes": yes, "no": no}).evaluate()
    assert [(c.name, c.ok, c.detail) for c in report.checks] == [("yes", True, ""), ("no", False, "")]


async def test_draining_makes_ready_fail_even_with_passing_checks() -> None:
    readiness = Readiness({"store": passing})
    readiness.drain()
    status, body = await readiness.ready()
    assert readiness.draining
    assert status == 503
    assert json.loads(body)["draining"] is True


async def test_no_checks_is_ready() -> None:
    assert (await Readiness({}).ready())[0] == 200


async def test_on_report_sees_every_evaluation() -> None:
    seen: list[ReadinessReport] = []
    readiness = Readiness({"store": failing}, on_report=seen.append)
    await readiness.evaluate()
    await readiness.evaluate()
    assert [r.ready for r in seen] == [False, False]


async def test_checks_run_concurrently(autojump_clock: trio.testing.MockClock) -> None:
    async def slow() -> bool:
        await trio.sleep(0.5)
        return True

    started = trio.current_time()
    report = await Readiness({"a": slow, "b": slow, "c": slow}, timeout=1.0).evaluate()
    assert report.ready
    assert trio.current_time() - started == pytest.approx(0.5)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Readiness({}, timeout=timeout)
