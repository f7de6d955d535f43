"""CircuitBreaker on Trio's virtual clock: the state machine, timeouts, cancellation and telemetry.

Every test runs under `autojump_clock`, so `trio.sleep(30)` takes no wall time and
`trio.current_time()` is exact: times asserted here are virtual, never measured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from whispr.observability import telemetry
from whispr.resilience import BreakerStatistics, CircuitBreaker, CircuitOpen, State

TIMEOUT = 1.0

Event = tuple[str, dict[str, float], dict[str, object]]


class Boom(Exception):
    """The dependency failed."""


class Dependency:
    """A fake dependency: each method is one way a call can end; `calls` counts how often it ran."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = trio.Event()

    async def succeed(self) -> str:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        return "ok"

    async def fail(self) -> str:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        raise Boom

    async def hang(self) -> str:
        self.calls += 1
        await trio.sleep_forever()

    async def succeed_when_released(self) -> str:
        self.calls += 1
        await self.gate.wait()
        return "ok"

    async def fail_when_released(self) -> str:
        self.calls += 1
        await self.gate.wait()
        raise Boom


@pytest.fixture
def events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    telemetry.attach(
        "test-resilience",
        [telemetry.CIRCUIT_STATE, telemetry.DEPENDENCY_CALL],
        lambda e, m, md: seen.append((e, dict(m), dict(md))),
    )
    yield seen
    telemetry.detach("test-resilience")


def transitions(events: list[Event]) -> list[object]:
    return [md["state"] for e, _, md in events if e == telemetry.CIRCUIT_STATE]


def calls(events: list[Event]) -> list[dict[str, object]]:
    return [md for e, _, md in events if e == telemetry.DEPENDENCY_CALL]


def breaker(**kwargs: Any) -> CircuitBreaker:
    return CircuitBreaker("dep", call_timeout=TIMEOUT, **kwargs)


async def fail_times(b: CircuitBreaker, dep: Dependency, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await b.call(dep.fail)


async def open_breaker(b: CircuitBreaker, dep: Dependency) -> None:
    await fail_times(b, dep, b.failure_threshold)
    assert b.state is State.OPEN


# -- CLOSED -> OPEN -----------------------------------------------------------------------------


async def test_exactly_five_consecutive_failures_open_it(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    assert await b.call(dep.succeed) == "ok"
    await fail_times(b, dep, 4)
    assert b.state is State.CLOSED
    assert b.statistics().consecutive_failures == 4
    await fail_times(b, dep, 1)
    assert b.state is State.OPEN
    assert b.statistics() == BreakerStatistics(State.OPEN, 0, 0, 0, retry_after=30.0)


async def test_a_success_resets_the_count(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    await fail_times(b, dep, 4)
    await b.call(dep.succeed)
    await fail_times(b, dep, 4)
    assert b.state is State.CLOSED
    await fail_times(b, dep, 1)
    assert b.state is State.OPEN


async def test_open_fails_fast_without_calling_fn(autojump_clock: trio.testing.MockClock, events: list[Event]) -> None:
    b, dep = breaker(), Dependency()
    await open_breaker(b, dep)
    await trio.sleep(29.5)
    for _ in range(10):
        with pytest.raises(CircuitOpen) as caught:
            await b.call(dep.succeed)
        assert caught.value.name == "dep"
        assert caught.value.retry_after == 0.5
    assert dep.calls == 5
    assert len(calls(events)) == 5  # refused calls emit no DEPENDENCY_CALL
    assert b.state is State.OPEN


# -- OPEN -> HALF_OPEN -> CLOSED / OPEN ---------------------------------------------------------


async def test_after_reset_timeout_the_next_call_is_a_trial(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    await open_breaker(b, dep)
    await trio.sleep(30)
    assert b.state is State.OPEN  # lazily: nothing happens until a call comes
    assert b.statistics().retry_after == 0.0
    assert await b.call(dep.succeed) == "ok"
    assert b.state is State.HALF_OPEN
    assert b.statistics() == BreakerStatistics(State.HALF_OPEN, 0, 0, 1, 0.0)


async def test_half_open_admits_at_most_three_concurrent_trials(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    await open_breaker(b, dep)
    await trio.sleep(30)
    results: list[str] = []

    async def trial() -> None:
        results.append(await b.call(dep.succeed_when_released))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(trial)
        await trio.testing.wait_all_tasks_blocked()
        assert b.statistics().trials_in_flight == 3
        with pytest.raises(CircuitOpen) as caught:
            await b.call(dep.succeed)
        assert caught.value.retry_after == TIMEOUT
        assert dep.calls == 5 + 3
        dep.gate.set()
    assert results == ["ok"] * 3
    assert b.state is State.CLOSED


async def test_it_closes_only_after_three_trials_succeed(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    await open_breaker(b, dep)
    await trio.sleep(30)
    await b.call(dep.succeed)
    await b.call(dep.succeed)
    assert b.state is State.HALF_OPEN
    await b.call(dep.succeed)
    assert b.state is State.CLOSED
    assert b.statistics() == BreakerStatistics(State.CLOSED, 0, 0, 0, 0.0)


async def test_a_trial_failure_reopens_with_a_fresh_timeout(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    await open_breaker(b, dep)
    await trio.sleep(30)
    await b.call(dep.succeed)
    await trio.sleep(10)
    await fail_times(b, dep, 1)
    assert b.state is State.OPEN
    assert b.statistics().retry_after == 30.0
    await trio.sleep(29)
    with pytest.raises(CircuitOpen):
        await b.call(dep.succeed)
    await trio.sleep(1)
    await b.call(dep.succeed)
    assert b.state is State.HALF_OPEN


async def test_trials_still_running_when_one_fails_do_not_count(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    await open_breaker(b, dep)
    await trio.sleep(30)

    async def trial() -> None:
        await b.call(dep.succeed_when_released)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trial)
        nursery.start_soon(trial)
        await trio.testing.wait_all_tasks_blocked()
        await fail_times(b, dep, 1)  # the third trial
        assert b.state is State.OPEN
        dep.gate.set()
    assert b.state is State.OPEN  # the two late successes belong to the half-open that ended


async def test_a_call_from_before_the_outage_does_not_touch_half_open(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    b, dep = CircuitBreaker("dep", call_timeout=60.0, reset_timeout=30.0), Dependency()

    async def slow_call() -> None:
        with pytest.raises(Boom):
            await b.call(dep.fail_when_released)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_call)  # admitted while CLOSED
        await trio.testing.wait_all_tasks_blocked()
        await open_breaker(b, dep)
        await trio.sleep(30)
        await b.call(dep.succeed)
        dep.gate.set()  # the slow call fails now, during HALF_OPEN
    assert b.statistics() == BreakerStatistics(State.HALF_OPEN, 0, 0, 1, 0.0)
    assert transitions(events) == ["open", "half_open"]


# -- timeouts ------------------------------------------------------------------------------------


async def test_a_hanging_call_is_cut_at_call_timeout_and_counts(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    b, dep = breaker(), Dependency()
    started = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await b.call(dep.hang)
    assert trio.current_time() - started == TIMEOUT
    assert b.statistics().consecutive_failures == 1
    assert events == [
        (
            telemetry.DEPENDENCY_CALL,
            {"duration": TIMEOUT},
            {"dependency": "dep", "operation": "hang", "outcome": "timeout"},
        )
    ]


async def test_five_hangs_open_it_within_five_call_timeouts(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    started = trio.current_time()
    for _ in range(5):
        with pytest.raises(trio.TooSlowError):
            await b.call(dep.hang)
    assert b.state is State.OPEN
    assert trio.current_time() - started == 5 * TIMEOUT


async def test_a_burst_of_concurrent_timeouts_opens_it_once(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    b, dep = breaker(), Dependency()

    async def caller() -> None:
        with pytest.raises(trio.TooSlowError):
            await b.call(dep.hang)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(caller)
    assert transitions(events) == ["open"]
    assert trio.current_time() == TIMEOUT
    assert [md["outcome"] for md in calls(events)] == ["timeout"] * 50


# -- cancellation and exception classes ----------------------------------------------------------


async def test_outside_cancellation_does_not_count(autojump_clock: trio.testing.MockClock, events: list[Event]) -> None:
    b, dep = breaker(), Dependency()
    await fail_times(b, dep, 4)
    with trio.move_on_after(TIMEOUT / 2) as scope:
        await b.call(dep.hang)
    assert scope.cancelled_caught
    assert b.state is State.CLOSED
    assert b.statistics().consecutive_failures == 4
    assert calls(events)[-1]["outcome"] == "cancelled"


async def test_a_cancelled_trial_frees_its_slot(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(), Dependency()
    await open_breaker(b, dep)
    await trio.sleep(30)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(b.call, dep.hang)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert b.state is State.HALF_OPEN
    assert b.statistics().trials_in_flight == 0
    for _ in range(3):
        await b.call(dep.succeed)
    assert b.state is State.CLOSED


async def test_exceptions_outside_failure_types_are_answers(autojump_clock: trio.testing.MockClock) -> None:
    b, dep = breaker(failure_types=(Boom,)), Dependency()

    async def not_found() -> str:
        raise LookupError("no such conversation")

    await fail_times(b, dep, 4)
    with pytest.raises(LookupError):
        await b.call(not_found)
    assert b.statistics().consecutive_failures == 0
    await fail_times(b, dep, 4)
    assert b.state is State.CLOSED


# -- telemetry -----------------------------------------------------------------------------------


async def test_one_outage_emits_open_half_open_closed_once(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    b, dep = CircuitBreaker("redis", call_timeout=0.2), Dependency()
    for _ in range(20):  # a Redis hang: every caller times out, then is refused fast
        with pytest.raises((trio.TooSlowError, CircuitOpen)):
            await b.call(dep.hang)
    await trio.sleep(30)
    for _ in range(10):
        await b.call(dep.succeed)
    assert [md for e, _, md in events if e == telemetry.CIRCUIT_STATE] == [
        {"breaker": "redis", "state": "open"},
        {"breaker": "redis", "state": "half_open"},
        {"breaker": "redis", "state": "closed"},
    ]
    assert [(md["operation"], md["outcome"]) for md in calls(events)] == [("hang", "timeout")] * 5 + [
        ("succeed", "ok")
    ] * 10


async def test_each_transition_is_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="whispr.resilience")
    b, dep = breaker(), Dependency()
    await open_breaker(b, dep)
    for _ in range(10):
        with pytest.raises(CircuitOpen):
            await b.call(dep.succeed)
    await trio.sleep(30)
    await fail_times(b, dep, 1)  # the first trial fails: open again
    await trio.sleep(30)
    for _ in range(10):
        await b.call(dep.succeed)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "circuit dep open (5 failures in a row): calls refused for 30s"),
        (logging.INFO, "circuit dep half-open: admitting 3 trial calls"),
        (logging.WARNING, "circuit dep open (a trial call failed): calls refused for 30s"),
        (logging.INFO, "circuit dep half-open: admitting 3 trial calls"),
        (logging.INFO, "circuit dep closed: 3 trial calls succeeded"),
    ]
    assert {"breaker": "dep", "state": "closed"}.items() <= caplog.records[-1].__dict__.items()  # structured extras


async def test_operation_names_the_call_in_telemetry(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    b, dep = breaker(), Dependency()
    await b.call(dep.succeed, operation="append_batch")
    assert [(md["operation"], md["outcome"]) for md in calls(events)] == [("append_batch", "ok")]


async def test_dependency_call_outcomes(autojump_clock: trio.testing.MockClock, events: list[Event]) -> None:
    b, dep = breaker(), Dependency()
    await b.call(dep.succeed)
    await fail_times(b, dep, 1)
    assert events == [
        (telemetry.DEPENDENCY_CALL, {"duration": 0.0}, {"dependency": "dep", "operation": "succeed", "outcome": "ok"}),
        (telemetry.DEPENDENCY_CALL, {"duration": 0.0}, {"dependency": "dep", "operation": "fail", "outcome": "error"}),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be at least 1"),
        ({"half_open_calls": 0}, "half_open_calls must be at least 1"),
        ({"reset_timeout": 0.0}, "reset_timeout must be a positive"),
        ({"call_timeout": -1.0}, "call_timeout must be a positive"),
        ({"call_timeout": float("nan")}, "call_timeout must be a positive"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    settings_ = {"call_timeout": TIMEOUT, **kwargs}
    with pytest.raises(ValueError, match=message):
        CircuitBreaker("dep", **settings_)


# -- property: the breaker matches a plain reference model ---------------------------------------

CANCEL_AFTER = TIMEOUT / 2


@dataclass
class Reference:
    """The contract.md §5 breaker, written as plainly as possible, for sequential calls."""

    threshold: int = 5
    reset: float = 30.0
    trials: int = 3
    state: str = "closed"
    failures: int = 0
    successes: int = 0
    opened_at: float = 0.0
    now: float = 0.0
    transitions: list[str] = field(default_factory=list)

    def go(self, state: str) -> None:
        self.state, self.failures, self.successes = state, 0, 0
        self.opened_at = self.now
        self.transitions.append(state)

    def call(self, kind: str) -> str:
        """Return what the caller sees: rejected, ok, error, timeout or cancelled."""
        if self.state == "open":
            if self.now - self.opened_at < self.reset:
                return "rejected"
            self.go("half_open")
        if kind == "cancel":
            self.now += CANCEL_AFTER
            return "cancelled"
        if kind == "hang":
            self.now += TIMEOUT
        outcome = {"ok": "ok", "fail": "error", "hang": "timeout"}[kind]
        if outcome == "ok" and self.state == "half_open":
            self.successes += 1
            if self.successes == self.trials:
                self.go("closed")
        elif outcome == "ok":
            self.failures = 0
        elif self.state == "half_open":
            self.go("open")
        else:
            self.failures += 1
            if self.failures == self.threshold:
                self.go("open")
        return outcome


async def observe(b: CircuitBreaker, dep: Dependency, kind: str) -> str:
    """Make one call of the given kind and return what the caller saw."""
    fn = {"ok": dep.succeed, "fail": dep.fail, "hang": dep.hang, "cancel": dep.hang}[kind]
    try:
        with trio.move_on_after(CANCEL_AFTER if kind == "cancel" else float("inf")):
            await b.call(fn)
            return "ok"
        return "cancelled"
    except CircuitOpen:
        return "rejected"
    except Boom:
        return "error"
    except trio.TooSlowError:
        return "timeout"


steps = st.lists(
    st.one_of(
        st.sampled_from(["ok", "fail", "hang", "cancel"]),
        st.integers(min_value=1, max_value=40),  # let that many seconds pass
    ),
    max_size=80,
)


@settings(deadline=None)
@given(steps)
def test_matches_the_reference_model(script: list[str | int]) -> None:
    model = Reference()

    async def run() -> None:
        b, dep = breaker(), Dependency()
        seen: list[str] = []
        telemetry.attach(
            "test-resilience-model", [telemetry.CIRCUIT_STATE], lambda e, m, md: seen.append(str(md["state"]))
        )
        try:
            for step in script:
                if isinstance(step, int):
                    await trio.sleep(step)
                    model.now += step
                    continue
                assert await observe(b, dep, step) == model.call(step)
                assert b.state.value == model.state
                assert trio.current_time() == model.now
        finally:
            telemetry.detach("test-resilience-model")
        assert seen == model.transitions

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
