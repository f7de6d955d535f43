"""Connection, rate and size limits (contract §5), with one limiter interface and two backends.

- `Limiter` is the interface for the limits that must hold across nodes: connect attempts per IP,
  messages per user, and `blocked` marks. `LocalLimiter` (here; the embedded default) and
  `whispr.adapters.redis_limits.RedisLimiter` (one budget for the whole cluster) implement it.
  `FallbackLimiter` runs the Redis one behind a circuit breaker with a local one behind it
  (reliability S11: fail safe, never fail open; D2: a hung Redis costs a send at most the
  breaker's call timeout, and nothing once the breaker is open). A hit on a blocked subject is
  refused in the same step that counts it, so enforcing a block costs no extra round trip.
- `ConnectionSlots` counts the live sockets (and pending handshakes) of each client IP on this
  node. It is deliberately per node: a slot belongs to a socket this process holds, and a shared
  counter would leak the slots of a node that dies.
- `SlidingWindow` and `TokenBucket` are the two algorithms as pure objects on integer microseconds
  (exact at the boundary, no float drift). The Redis backend runs the same arithmetic in Lua.
  The join limit is per socket, so the socket holds its own `SlidingWindow`.
- `content_too_large` counts UTF-8 bytes (trio-websocket counts characters; reliability §0, S10).

Theory of operation:
- Token bucket, as GCRA (the virtual-scheduling form of a bucket of `limit` tokens refilled at
  `limit / period` per second): each accepted hit pushes the theoretical arrival time `tat` one
  interval T = period / limit later; a hit is refused when that would put `tat` more than
  `limit * T` ahead of now. `limit` hits pass at once; then one per T. Contract: messages.
- Sliding window log: a hit passes when fewer than `limit` accepted hits lie in (now - period, now].
  Exactly "at most N in any period" (spec §9.2 counts: > 20 connects / 300 s, > 30 joins / 60 s).
  Refused hits are not recorded, so memory per key is bounded by `limit`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from bisect import bisect_right
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, TypeVarTuple

import trio

from whispr.resilience import CircuitBreaker, CircuitOpen, State

RateAlgorithm = Literal["token_bucket", "sliding_window"]
MICROS = 1_000_000
SWEEP_EVERY_US = 60 * MICROS  # how often LocalLimiter forgets idle keys

PRIMARY_TIMEOUT = 0.25  # seconds a shared-limiter call may take (reliability.md D2 suggests 0.2 s for Redis)
# Shared-limiter calls in flight at once: whispr.adapters.redis_client.open_redis's default pool, which
# the limiter's own client has (whispr/app.py), so an admitted call never waits for a connection.
PRIMARY_IN_FLIGHT = 32
# Seconds a call may wait for one of those: open_redis's default pool_timeout, the bound the same
# queue had when it formed in the client's pool, inside the breaker.
PRIMARY_QUEUE_TIMEOUT = 2.0

_log = logging.getLogger("whispr.security")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class LimiterUnavailable(Exception):
    """The limiter's backend (Redis) failed; raised `from` the backend's own error."""


# How a call through FallbackLimiter's breaker fails: the backend failed, timed out, or was not called.
_PRIMARY_FAILED = (LimiterUnavailable, trio.TooSlowError, CircuitOpen)


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` hits per `period` seconds for each subject; `name` namespaces the keys.

    Raises:
        ValueError: a non-positive limit or period, or a name with ':' or spaces.
    """

    name: str
    limit: int
    period: float
    algorithm: RateAlgorithm = "token_bucket"

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.period > 0:
            raise ValueError(f"rate {self.name!r} needs limit >= 1 and period > 0")
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"rate name {self.name!r} must be an identifier")

    @property
    def interval_us(self) -> int:
        """T, the token bucket's refill interval, in whole microseconds."""
        return max(1, round(self.period * MICROS / self.limit))

    @property
    def period_us(self) -> int:
        return round(self.period * MICROS)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Contract §5 defaults."""

    connections_per_ip: int = 10
    connect_rate: Rate = Rate("connect", 20, 300.0, "sliding_window")
    message_rate: Rate = Rate("message", 100, 60.0, "token_bucket")
    join_rate: Rate = Rate("join", 30, 60.0, "sliding_window")
    max_content_bytes: int = 10_000


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one hit. `retry_after` (seconds) is 0 when allowed, else when a hit would pass.

    `blocked`: refused because the subject is blocked (`retry_after` is then what is left of the block).
    """

    allowed: bool
    retry_after: float = 0.0
    blocked: bool = False

    @property
    def retry_after_ms(self) -> int:
        return math.ceil(self.retry_after * 1000)


ALLOWED = Decision(True)


class Limiter(Protocol):
    """Cluster-relevant rate limits and blocks. Subjects are strings such as an IP or a user id.

    Every method is a checkpoint and may block on the backend's I/O (one Redis round trip, bounded
    by the client's socket timeout). Cancellable; a cancelled call has either taken effect fully
    or not at all (each is one atomic step).
    """

    async def hit(self, rate: Rate, subject: str) -> Decision:
        """Count one hit of `subject` against `rate`; refused hits consume nothing.

        A blocked `subject` (see `block`) is refused before its budget is looked at:
        `Decision(False, <seconds left on the block>, blocked=True)`, in the same atomic step.

        Raises:
            LimiterUnavailable: the backend failed (never raised by `LocalLimiter`).
        """
        ...

    async def block(self, subject: str, seconds: float) -> None:
        """Mark `subject` blocked for `seconds` (a later, longer block extends it).

        Raises:
            LimiterUnavailable: the backend failed.
        """
        ...

    async def blocked_for(self, subject: str) -> float:
        """Seconds left on `subject`'s block, 0.0 when it is not blocked.

        Raises:
            LimiterUnavailable: the backend failed.
        """
        ...


def ip_subject(client_ip: str) -> str:
    return f"ip:{client_ip}"


def user_subject(user_id: str) -> str:
    return f"user:{user_id}"


class TokenBucket:
    """GCRA state for one subject (see the module docstring). Not thread-safe; no I/O."""

    __slots__ = ("_burst", "_interval", "_tat")

    def __init__(self, rate: Rate) -> None:
        self._interval = rate.interval_us
        self._burst = rate.interval_us * rate.limit
        self._tat = 0  # invariant: accepted hits so far fit in [.., tat]; tat <= now + burst

    def hit(self, now_us: int) -> Decision:
        tat = max(self._tat, now_us) + self._interval
        if tat - now_us > self._burst:
            return Decision(False, (tat - self._burst - now_us) / MICROS)
        self._tat = tat
        return ALLOWED

    def idle(self, now_us: int) -> bool:
        """True when the bucket is full again, i.e. forgetting it changes nothing."""
        return self._tat <= now_us


class SlidingWindow:
    """Sliding-window-log state for one subject (see the module docstring). Not thread-safe; no I/O."""

    __slots__ = ("_events", "_limit", "_period")

    def __init__(self, rate: Rate) -> None:
        self._limit = rate.limit
        self._period = rate.period_us
        # Accepted hit times, oldest first; len <= limit. A list, not a deque: one window per socket
        # (joins) and per client IP (connects), and an empty deque is 760 bytes, a list 56.
        self._events: list[int] = []

    def hit(self, now_us: int) -> Decision:
        events = self._events
        expired = bisect_right(events, now_us - self._period)  # times only grow: the list is sorted
        if expired:
            del events[:expired]
        if len(events) >= self._limit:
            return Decision(False, (events[0] + self._period - now_us) / MICROS)
        events.append(now_us)
        return ALLOWED

    def idle(self, now_us: int) -> bool:
        return not self._events or self._events[-1] <= now_us - self._period


def _new_state(rate: Rate) -> TokenBucket | SlidingWindow:
    return TokenBucket(rate) if rate.algorithm == "token_bucket" else SlidingWindow(rate)


class LocalLimiter:
    """The in-process `Limiter`: the embedded default, one node's budget.

    `clock` returns seconds; the default `trio.current_time` makes tests run on Trio's virtual clock.
    Idle keys and lapsed blocks are forgotten at most every minute, so memory follows the active subjects.
    """

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._states: dict[tuple[Rate, str], TokenBucket | SlidingWindow] = {}
        self._blocks: dict[str, int] = {}  # subject -> end of block, µs on `clock`
        self._next_sweep = 0

    async def hit(self, rate: Rate, subject: str) -> Decision:
        await trio.lowlevel.checkpoint()
        blocked = self.block_left(subject)
        if blocked:
            return Decision(False, blocked, blocked=True)
        now = self._now()
        state = self._states.get((rate, subject))
        if state is None:
            state = self._states[rate, subject] = _new_state(rate)
        return state.hit(now)

    async def block(self, subject: str, seconds: float) -> None:
        await trio.lowlevel.checkpoint()
        until = self._now() + round(seconds * MICROS)
        self._blocks[subject] = max(until, self._blocks.get(subject, 0))

    async def blocked_for(self, subject: str) -> float:
        await trio.lowlevel.checkpoint()
        return self.block_left(subject)

    def block_left(self, subject: str) -> float:
        """`blocked_for` without the checkpoint: a dictionary lookup, for callers on a hot path."""
        left = self._blocks.get(subject, 0) - self._now()
        return left / MICROS if left > 0 else 0.0

    def _now(self) -> int:
        now = round(self._clock() * MICROS)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_US
            self._states = {key: state for key, state in self._states.items() if not state.idle(now)}
            self._blocks = {subject: until for subject, until in self._blocks.items() if until > now}
        return now


class _NoAnswer(Exception):
    """The shared limiter gave no answer: it failed, its breaker is open, or the node had no slot free."""


class FallbackLimiter:
    """`primary` (Redis) while it works, `fallback` (local) while it fails (reliability S11, D2).

    During an outage each node enforces the limits on its own: at most one budget per node, never
    none. Every call to `primary` goes through `breaker` (contract.md §5: 5 failures → open 30 s →
    3 half-open calls): a failure (`LimiterUnavailable`, or no answer within the breaker's
    `call_timeout`) or a refusal by the open breaker sends that call to `fallback`, so a hung Redis
    delays a call by at most `call_timeout` and, once the breaker is open, not at all. Service
    resumes when the breaker's trials succeed. A warning is logged when the outage starts and an
    info line when it ends (the breaker's transitions are logged and counted through its
    CIRCUIT_STATE telemetry). Never raises `LimiterUnavailable`.

    Admission (a busy node is not a Redis failure): at most `max_in_flight` calls are inside the
    breaker at once; the others wait, FIFO, up to `PRIMARY_QUEUE_TIMEOUT` for one of those slots
    *before* the breaker. The cause, measured under a connect storm (120-200 connects at once, three
    calls each, 1 ms of CPU each besides, one Trio thread with the trio-asyncio bridge; Redis answers
    in under 1 ms): every call was handed to redis-py at once and queued for one of the client's 32
    pooled connections, and the asyncio loop worked through hundreds of such tasks, all inside the
    breaker's 0.25 s: in-breaker p50 137-213 ms, 5-70 timeouts per storm, breaker open in 5 of 6
    runs. With the slots, no admitted call waits for a connection and the breaker times only the
    bridge and Redis on a busy loop: p50 18-37 ms, max 89-129 ms, 0 timeouts and 0 calls answered
    locally in 6 runs. Taking a free slot is synchronous (no extra checkpoint per call); a call that
    gets none in time is answered by `fallback` and counts neither way (the breaker never saw it).
    A hung Redis still opens the breaker after 5 admitted calls time out, and the queue then drains
    at once through the open breaker. Right after a start the first calls would also open their
    connections and load their scripts inside the breaker: the app runs `RedisLimiter.warm_up`
    before listening (tests/faults E2/E5: the breaker opened in 1 of 7 node starts with the slots
    alone, in 0 of 21 with both). What the slots cannot remove is the loop's own lag: a call crosses
    the bridge in two or three scheduling passes, so passes of over ~0.1 s still eat the 0.25 s.

    A subject blocked on this node (`block` writes `fallback` too) is refused from `fallback`'s
    mark without asking `primary`: a block holds through an outage, and on the node that set it
    costs nothing. Blocks set on other nodes reach this one through `primary.hit`'s own check.

    Args:
        primary: the shared limiter.
        fallback: the node's own limiter.
        breaker: default `CircuitBreaker("redis_limits", call_timeout=PRIMARY_TIMEOUT)`, counting
            `LimiterUnavailable` and timeouts as failures.
        max_in_flight: calls admitted to `breaker` at once (the Redis client's pool size).
    """

    def __init__(
        self,
        primary: Limiter,
        fallback: LocalLimiter,
        breaker: CircuitBreaker | None = None,
        max_in_flight: int = PRIMARY_IN_FLIGHT,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._breaker = breaker or CircuitBreaker(
            "redis_limits", call_timeout=PRIMARY_TIMEOUT, failure_types=(LimiterUnavailable,)
        )
        self._in_flight = trio.CapacityLimiter(max_in_flight)
        self._degraded = False

    async def hit(self, rate: Rate, subject: str) -> Decision:
        blocked = self._fallback.block_left(subject)
        if blocked:
            await trio.lowlevel.checkpoint()
            return Decision(False, blocked, blocked=True)
        try:
            return await self._shared(self._primary.hit, rate, subject)
        except _NoAnswer:
            return await self._fallback.hit(rate, subject)

    async def block(self, subject: str, seconds: float) -> None:
        await self._fallback.block(subject, seconds)  # also locally: it must hold through an outage
        with contextlib.suppress(_NoAnswer):
            await self._shared(self._primary.block, subject, seconds)

    async def blocked_for(self, subject: str) -> float:
        local = self._fallback.block_left(subject)
        try:
            shared = await self._shared(self._primary.blocked_for, subject)
        except _NoAnswer:
            return local
        return max(local, shared)

    async def _shared(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """`fn(*args)` on `primary`: a slot (see "Admission"), then the breaker.

        Blocking: up to `PRIMARY_QUEUE_TIMEOUT` for a slot while all are taken, then up to the
        breaker's `call_timeout` (not at all while it is open). Cancellable. Raises `_NoAnswer`.
        """
        try:
            self._in_flight.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(PRIMARY_QUEUE_TIMEOUT) as queued:
                await self._in_flight.acquire()
            if queued.cancelled_caught:
                raise _NoAnswer from None  # this node's own load, not a Redis failure: not counted
        try:
            result = await self._breaker.call(fn, *args)
        except _PRIMARY_FAILED as exc:
            if not self._degraded:
                self._degraded = True
                _log.warning("shared limiter unavailable, enforcing limits per node: %s", exc.__cause__ or exc)
            raise _NoAnswer from exc
        finally:
            self._in_flight.release()
        # Only once the breaker has closed: a call admitted before it opened may still succeed after,
        # and its success ends no outage (logging it did flap the two lines, seen in the D2 logs).
        if self._degraded and self._breaker.state is State.CLOSED:
            self._degraded = False
            _log.info("shared limiter available again")
        return result


class ConnectionSlots:
    """Live sockets and pending handshakes per client IP on this node (contract §5: 10 per IP).

    Synchronous, no I/O. Acquire when the upgrade request arrives, release exactly once when the
    handshake is refused or the socket is gone.
    """

    def __init__(self, per_ip: int = 10) -> None:
        self._per_ip = per_ip
        self._held: dict[str, int] = {}  # invariant: 0 < count <= per_ip; no zero entries

    def try_acquire(self, client_ip: str) -> bool:
        """Take a slot for `client_ip`; False (and nothing taken) when it already holds `per_ip`."""
        held = self._held.get(client_ip, 0)
        if held >= self._per_ip:
            return False
        self._held[client_ip] = held + 1
        return True

    def release(self, client_ip: str) -> None:
        """Give back a slot taken with `try_acquire`.

        Raises:
            RuntimeError: `client_ip` holds no slot (a double release: a bug in the caller).
        """
        held = self._held.get(client_ip, 0)
        if held == 0:
            raise RuntimeError(f"no connection slot held for {client_ip}")
        if held == 1:
            del self._held[client_ip]
        else:
            self._held[client_ip] = held - 1

    def held(self, client_ip: str) -> int:
        return self._held.get(client_ip, 0)


def content_too_large(content: str, max_bytes: int = 10_000) -> bool:
    """Whether `content` is over `max_bytes` in UTF-8 (contract §5: exactly `max_bytes` is accepted)."""
    if len(content) > max_bytes:
        return True  # every character is at least one byte
    if len(content) * 4 <= max_bytes:
        return False  # and at most four
    return len(content.encode("utf-8", "surrogatepass")) > max_bytes
