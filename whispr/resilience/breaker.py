"""`CircuitBreaker`: fail fast while a dependency is down, probe it, and close again when it answers.

Rules (contract.md §5 "5 failures → open 30 s → 3 half-open calls → `service_unavailable`";
reliability.md D2, D8, D9):

- CLOSED: every call runs. A call that fails (raises one of `failure_types`, or runs past
  `call_timeout`) adds one to a count of consecutive failures; a call that succeeds resets it.
  `failure_threshold` consecutive failures → OPEN.
- OPEN: every call raises `CircuitOpen` at once, without calling `fn`. The first call made at
  least `reset_timeout` seconds after opening (by `trio.current_time()`) moves the breaker to
  HALF_OPEN and becomes its first trial. There is no timer task: the change happens lazily.
- HALF_OPEN: at most `half_open_calls` trial calls are admitted; any other call raises
  `CircuitOpen`. Once `half_open_calls` trials have succeeded → CLOSED. Any trial failure →
  OPEN again, with a fresh `reset_timeout`.

Theory of operation: the rule "3 half-open calls" is read as "the breaker closes after 3 successful
trials", not "after the first success": one lucky probe against a flapping dependency (F2) would
otherwise close the breaker and let the full load through. Trials are counted as admissions, so the
3 trials may run concurrently or one after the other; a 4th caller is refused until they end.

Invariants:
- Each transition bumps `_generation`, and a call's outcome counts only if the breaker is still in
  the generation that admitted the call. So a burst of concurrent calls that all time out opens the
  breaker once (the 5th failure) and the rest of the burst changes nothing, and a slow call
  admitted while CLOSED cannot reopen a breaker that has since gone HALF_OPEN (possible when
  `call_timeout` ≥ `reset_timeout`). That keeps the D2 figure "closed→open→half_open→closed
  exactly once".
- An outcome that is neither success nor failure (the call was cancelled from outside, or raised a
  `BaseException` that is not an `Exception`) changes no count, except that a HALF_OPEN trial gives
  its slot back, so a cancelled probe never wedges the breaker in HALF_OPEN.
- An exception that is not one of `failure_types` is an answer from the dependency (e.g. "not
  found"): it counts as a success and propagates unchanged.

Logs (logger `whispr.resilience`, once per transition, never per call): a WARNING when the breaker
opens, an INFO line when it goes half-open and when it closes again.

Telemetry (whispr/observability/telemetry.py): CIRCUIT_STATE {} {breaker, state} on every
transition (state ∈ closed, open, half_open; nothing is emitted at construction), and
DEPENDENCY_CALL {duration} {dependency, operation, outcome} for every call that ran `fn`, where
`dependency` is the breaker's name, `operation` is `call`'s `operation` (default `fn.__name__`)
and `outcome` ∈ ok, error, timeout, cancelled. Calls refused with `CircuitOpen` emit no
DEPENDENCY_CALL: the dependency was not called.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple

import trio

from whispr.observability.telemetry import CIRCUIT_STATE, DEPENDENCY_CALL, emit

__all__ = ["BreakerStatistics", "CircuitBreaker", "CircuitOpen", "State"]

_log = logging.getLogger("whispr.resilience")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class State(enum.StrEnum):
    """A breaker's state; the value is the `state` in CIRCUIT_STATE telemetry."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """The breaker refused the call without running it; the caller answers `service_unavailable`.

    Attributes:
        name: the breaker's name (the dependency).
        retry_after: seconds until a call may be admitted again. While OPEN, the time left until
            HALF_OPEN; while HALF_OPEN with every trial slot taken, `call_timeout` (the trials in
            flight end by then).
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry after {retry_after:.3f}s")
        self.name = name
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot of a breaker, from `CircuitBreaker.statistics()`.

    Attributes:
        state: the state recorded at the last transition (OPEN stays OPEN until a call after
            `reset_timeout` moves it to HALF_OPEN).
        consecutive_failures: failures in a row while CLOSED; 0 in the other states.
        trials_in_flight: HALF_OPEN trial calls still running; 0 in the other states.
        trial_successes: HALF_OPEN trial calls that succeeded; 0 in the other states.
        retry_after: while OPEN, seconds until the next call will be admitted as a trial; else 0.
    """

    state: State
    consecutive_failures: int
    trials_in_flight: int
    trial_successes: int
    retry_after: float


class _Outcome(enum.Enum):
    SUCCESS = enum.auto()
    FAILURE = enum.auto()
    NEITHER = enum.auto()


class CircuitBreaker:
    """A circuit breaker around one dependency, for Trio code. Not thread-safe (one Trio run).

    Args:
        name: the dependency's name, e.g. "postgres", "redis", "user_service"; used in
            `CircuitOpen`, and as `breaker` / `dependency` in telemetry.
        call_timeout: seconds a call may run before it is cancelled and counted as a failure
            (reliability.md D2 suggests 0.2 for Redis, D9 2.0 for PostgreSQL). Required: it
            depends on the dependency.
        failure_threshold: consecutive failures that open the breaker (contract.md §5: 5).
        reset_timeout: seconds the breaker stays OPEN before it admits trials (contract.md §5: 30).
        half_open_calls: trial calls admitted while HALF_OPEN, all of which must succeed to close
            the breaker (contract.md §5: 3).
        failure_types: exceptions raised by `fn` that count as failures. Others count as
            successes (the dependency answered). A timeout always counts as a failure.

    Raises:
        ValueError: a threshold or count below 1, or a timeout that is not positive.
    """

    def __init__(
        self,
        name: str,
        *,
        call_timeout: float,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_calls: int = 3,
        failure_types: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold!r}")
        if half_open_calls < 1:
            raise ValueError(f"half_open_calls must be at least 1, got {half_open_calls!r}")
        if not reset_timeout > 0:
            raise ValueError(f"reset_timeout must be a positive number of seconds, got {reset_timeout!r}")
        if not call_timeout > 0:
            raise ValueError(f"call_timeout must be a positive number of seconds, got {call_timeout!r}")
        self.name = name
        self.call_timeout = call_timeout
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_calls = half_open_calls
        self.failure_types = failure_types
        self._state = State.CLOSED
        # Bumped on every transition; a call's outcome counts only in the generation that admitted it.
        self._generation = 0
        # CLOSED only: failures in a row, always < failure_threshold.
        self._failures = 0
        # OPEN only: the trio.current_time() from which a call is admitted as a trial.
        self._retry_at = 0.0
        # HALF_OPEN only: trials admitted (running or succeeded), always <= half_open_calls;
        # successes <= admitted, and successes == half_open_calls closes the breaker.
        self._trials_admitted = 0
        self._trial_successes = 0

    @property
    def state(self) -> State:
        """The state recorded at the last transition (see `BreakerStatistics.state`)."""
        return self._state

    def statistics(self) -> BreakerStatistics:
        """Return a snapshot of the breaker. Must be called inside a Trio run (it reads the clock)."""
        retry_after = max(0.0, self._retry_at - trio.current_time()) if self._state is State.OPEN else 0.0
        return BreakerStatistics(
            state=self._state,
            consecutive_failures=self._failures,
            trials_in_flight=self._trials_admitted - self._trial_successes,
            trial_successes=self._trial_successes,
            retry_after=retry_after,
        )

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts, operation: str | None = None) -> T:
        """Run `await fn(*args)` through the breaker and return its result.

        `operation` names the call in DEPENDENCY_CALL telemetry; default `fn.__name__` (a caller
        that routes every call through one generic function passes the real operation's name).

        Blocking: while the breaker admits the call, as long as `fn` runs, and never longer than
        `call_timeout`. A refused call does not wait: it executes one checkpoint and raises.
        Cancellable: yes. A cancellation from outside propagates as usual and counts neither as a
        success nor as a failure.

        Raises:
            CircuitOpen: the breaker is OPEN, or HALF_OPEN with every trial slot taken; `fn` was
                not called.
            trio.TooSlowError: `fn` ran longer than `call_timeout` and was cancelled (a failure).
            Exception: whatever `fn` raised, unchanged (a failure if it is one of
                `failure_types`, else a success).
        """
        await trio.lowlevel.checkpoint()
        started = trio.current_time()
        generation = self._admit(started)
        if operation is None:
            operation = getattr(fn, "__name__", type(fn).__name__)
        outcome, label = _Outcome.NEITHER, "cancelled"
        deadline = trio.move_on_after(self.call_timeout)  # a cancel scope; its deadline starts on entry
        try:
            with deadline:
                result = await fn(*args)
                outcome, label = _Outcome.SUCCESS, "ok"
                return result
        except Exception as exc:
            outcome, label = (
                (_Outcome.FAILURE, "error") if isinstance(exc, self.failure_types) else (_Outcome.SUCCESS, "ok")
            )
            raise
        finally:
            if deadline.cancelled_caught:
                outcome, label = _Outcome.FAILURE, "timeout"
            now = trio.current_time()
            self._record(generation, outcome, now)
            emit(
                DEPENDENCY_CALL,
                {"duration": now - started},
                {"dependency": self.name, "operation": operation, "outcome": label},
            )
        raise trio.TooSlowError(f"{self.name}: {operation} took longer than {self.call_timeout}s")

    # -- the state machine (synchronous: no checkpoint between a decision and its effect) ---------

    def _admit(self, now: float) -> int:
        """Admit a call at `now` and return its generation, or raise `CircuitOpen`."""
        if self._state is State.OPEN:
            if now < self._retry_at:
                raise CircuitOpen(self.name, self._retry_at - now)
            self._transition(State.HALF_OPEN, now)
        if self._state is State.HALF_OPEN:
            if self._trials_admitted >= self.half_open_calls:
                raise CircuitOpen(self.name, self.call_timeout)
            self._trials_admitted += 1
        return self._generation

    def _record(self, generation: int, outcome: _Outcome, now: float) -> None:
        """Count the outcome of a call admitted in `generation`, if that generation is current."""
        if generation != self._generation:
            return
        if self._state is State.CLOSED:
            if outcome is _Outcome.SUCCESS:
                self._failures = 0
            elif outcome is _Outcome.FAILURE:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._transition(State.OPEN, now)
        elif self._state is State.HALF_OPEN:
            if outcome is _Outcome.SUCCESS:
                self._trial_successes += 1
                if self._trial_successes >= self.half_open_calls:
                    self._transition(State.CLOSED, now)
            elif outcome is _Outcome.FAILURE:
                self._transition(State.OPEN, now)
            else:
                self._trials_admitted -= 1

    def _transition(self, state: State, now: float) -> None:
        extra = {"breaker": self.name, "state": state.value}
        if state is State.OPEN:
            cause = "a trial call failed" if self._state is State.HALF_OPEN else f"{self._failures} failures in a row"
            _log.warning(
                "circuit %s open (%s): calls refused for %gs", self.name, cause, self.reset_timeout, extra=extra
            )
        elif state is State.HALF_OPEN:
            _log.info("circuit %s half-open: admitting %d trial calls", self.name, self.half_open_calls, extra=extra)
        else:
            _log.info("circuit %s closed: %d trial calls succeeded", self.name, self._trial_successes, extra=extra)
        self._state = state
        self._generation += 1
        self._failures = 0
        self._trials_admitted = 0
        self._trial_successes = 0
        self._retry_at = now + self.reset_timeout if state is State.OPEN else 0.0
        emit(CIRCUIT_STATE, {}, {"breaker": self.name, "state": state.value})
