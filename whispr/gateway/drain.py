"""Graceful drain of one node: deploys and scale-in move sockets instead of dropping them.

contract.md §1 (503 + Retry-After while draining), §3 (`reconnect_required` on `user:` before a
planned close), §6 (close 1012 "node draining"); reliability.md §2 E5.

`Drainer.wrap(connect)` wraps the endpoint's `connect`: it tracks every socket it accepts and,
once `drain()` has started, refuses new upgrades with **503 + Retry-After** instead of closing
the listener. Why refuse rather than close the listener (Kubernetes): the kubelet keeps probing
the pod during termination, and a closed listener would turn `/health` into "connection refused"
and `/ready` into a timeout instead of the explicit 503 that takes the pod out of the Service; a
kube-proxy or ingress that has not yet seen the readiness change still routes a few new sockets
here, and an explicit 503 with Retry-After (which nginx can retry on the next upstream,
`proxy_next_upstream http_503`) beats a reset. `/metrics` stays scrapeable during the drain.

`drain()` (what the node runs when its endpoint is asked to stop, i.e. on SIGTERM):

1. The caller has already failed `/ready` (`Readiness.drain()`): the load balancer stops
   sending new sockets.
2. New upgrades get 503 `Retry-After: <ceil(retry_after_ms / 1000)>`.
3. The sockets open at that moment are closed in batches spread evenly over `window` seconds
   (at most one batch per `min_interval`), so their reconnects reach the other nodes as a ramp,
   not a herd. Each socket first gets `reconnect_required {"reason": "draining",
   "retry_after_ms": n}` on its `user:<id>` topic (if joined; join_ref null, like a broadcast,
   which phoenix.js delivers to the joined channel), then close **1012**.
4. In-flight writes are flushed: a socket whose handler is running (e.g. a `send_message`
   awaiting its commit) is closed only when that handler returns, so the ack of a message that
   was committed is written before the close frame; the transport writes what is queued before
   its close frame (`Transport.close`). A frame that arrives after the close frame was queued is
   discarded unread (RFC 6455 §5.5.1): it was never committed, and the client resends it on
   the next node (`client_message_id` makes that exactly-once).
5. Sockets accepted while the batches ran (a handshake already past `connect`) are closed the
   same way after the last batch; then `drain()` waits up to `flush_timeout` seconds for every
   tracked connection to finish its close handshake. It returns a `DrainReport`.

The node then stops its tree in order (endpoint first, store last) within `shutdown_grace`:
`window + flush_timeout` fits inside it with a margin to spare (`drain_config`).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from whispr.config import ConfigError, Settings
from whispr.gateway.frames import text_frame
from whispr.gateway.socket import PhoenixSocket
from whispr.gateway.transport import Accept, Connect, Refuse, SocketHandler, Transport, UpgradeRequest
from whispr.protocol import Message

__all__ = [
    "CLOSE_DRAINING",
    "RECONNECT_REQUIRED",
    "STOP_MARGIN",
    "DrainConfig",
    "DrainReport",
    "Drainer",
    "drain_config",
]

_log = logging.getLogger("whispr.gateway")

CLOSE_DRAINING = 1012  # contract.md §6: node draining, reconnect elsewhere
RECONNECT_REQUIRED = "reconnect_required"
STOP_MARGIN = 5.0
"""Seconds of `shutdown_grace` (at most a quarter of it) left for the rest of the tree after the drain."""
DEFAULT_WINDOW = 10.0
DEFAULT_FLUSH_TIMEOUT = 6.0  # above the transport's 5 s close_timeout


@dataclass(frozen=True, slots=True)
class DrainConfig:
    """How a drain spreads its closes.

    Attributes:
        window: seconds over which the open sockets are closed (`WHISPR_DRAIN_WINDOW`).
        flush_timeout: seconds after the last batch for the close handshakes to finish.
        retry_after_ms: the reconnect hint: `reconnect_required`'s `retry_after_ms` is drawn
            uniformly from [retry_after_ms / 2, retry_after_ms] (jitter), and refused upgrades
            get `Retry-After: ceil(retry_after_ms / 1000)` seconds.
        min_interval: seconds between two batches at least (bounds the number of wake-ups).
    """

    window: float = DEFAULT_WINDOW
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT
    retry_after_ms: int = 1000
    min_interval: float = 0.05

    def __post_init__(self) -> None:
        if not (self.window >= 0 and math.isfinite(self.window)):
            raise ConfigError(f"drain_window must be a non-negative number of seconds, got {self.window!r}")
        if not self.flush_timeout > 0 or not self.min_interval > 0:
            raise ConfigError("drain flush_timeout and min_interval must be positive")
        if self.retry_after_ms < 0:
            raise ConfigError(f"drain retry_after_ms must not be negative, got {self.retry_after_ms!r}")

    @property
    def total(self) -> float:
        """The longest a drain takes: the window plus the flush."""
        return self.window + self.flush_timeout

    def schedule(self, count: int) -> list[tuple[float, int]]:
        """`(offset seconds, batch size)` for `count` sockets: batches evenly spaced over the
        window, sizes differing by at most one, the first at offset 0."""
        if count <= 0:
            return []
        steps = max(1, min(count, int(self.window / self.min_interval)))
        base, extra = divmod(count, steps)
        return [(self.window * k / steps, base + (1 if k < extra else 0)) for k in range(steps)]


def drain_config(settings: Settings, env: Mapping[str, str] | None = None) -> DrainConfig:
    """The drain settings for `settings.shutdown_grace` (G) and `WHISPR_DRAIN_WINDOW`.

    The flush gets min(6 s, G/4) and the rest of the tree keeps min(STOP_MARGIN, G/4). The window
    defaults to min(10 s, G/3) (10 s with the default 30 s grace); an explicit
    `WHISPR_DRAIN_WINDOW` must leave the flush and the margin inside the grace.

    Raises:
        ConfigError: the window is not a non-negative number, or it does not fit (the drain
            would be cut short by the tree's own deadline).
    """
    env = os.environ if env is None else env
    grace = settings.shutdown_grace
    flush = min(DEFAULT_FLUSH_TIMEOUT, grace / 4)
    margin = min(STOP_MARGIN, grace / 4)
    raw = env.get("WHISPR_DRAIN_WINDOW")
    if raw is None:
        return DrainConfig(window=min(DEFAULT_WINDOW, grace / 3), flush_timeout=flush)
    try:
        window = float(raw)
    except ValueError:
        raise ConfigError(f"WHISPR_DRAIN_WINDOW must be a number of seconds, got {raw!r}") from None
    config = DrainConfig(window=window, flush_timeout=flush)
    if config.total + margin > grace:
        raise ConfigError(
            f"WHISPR_DRAIN_WINDOW ({window:g}s) + {flush:g}s flush + {margin:g}s for the rest of the tree must "
            f"fit inside WHISPR_SHUTDOWN_GRACE ({grace:g}s): lower the window to at most "
            f"{grace - flush - margin:g}s or raise the grace"
        )
    return config


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What one drain did: sockets closed, batches, seconds taken, sockets still open at the end."""

    sockets: int
    batches: int
    duration: float
    left_open: int


class _Tracked:
    """A socket handler wrapped so the drain knows when a frame is being handled."""

    __slots__ = ("_drainer", "busy", "closing", "inner", "pending", "transport")

    def __init__(self, drainer: Drainer, inner: SocketHandler, transport: Transport) -> None:
        self._drainer = drainer
        self.inner = inner
        self.transport = transport
        self.busy = 0  # frames being handled (0 or 1: the transport dispatches serially)
        self.pending = False  # a drain close waits for the running handler
        self.closing = False  # the drain has dealt with this socket

    async def on_text(self, data: str) -> None:
        self.busy += 1
        try:
            await self.inner.on_text(data)
        finally:
            self._done()

    async def on_binary(self, data: bytes) -> None:
        self.busy += 1
        try:
            await self.inner.on_binary(data)
        finally:
            self._done()

    async def on_close(self) -> None:
        try:
            await self.inner.on_close()
        finally:
            self._drainer._forget(self)

    def _done(self) -> None:
        self.busy -= 1
        if self.pending and not self.busy:
            self.pending = False
            self.transport.close(CLOSE_DRAINING, "draining")


class Drainer:
    """Tracks one endpoint's sockets and drains them (see the module docstring)."""

    def __init__(self, config: DrainConfig | None = None) -> None:
        self.config = config or DrainConfig()
        self._sockets: dict[_Tracked, None] = {}  # insertion-ordered set
        self._empty: trio.Event | None = None
        self._draining = False

    @property
    def draining(self) -> bool:
        """True once `drain()` started; new upgrades are refused with 503."""
        return self._draining

    def __len__(self) -> int:
        """Connections open (tracked) now."""
        return len(self._sockets)

    def wrap(self, connect: Connect) -> Connect:
        """`connect` that refuses while draining and tracks what it accepts."""
        retry_after = str(max(1, math.ceil(self.config.retry_after_ms / 1000)))
        refusal = Refuse(503, "draining", (("Retry-After", retry_after),))

        async def tracked_connect(request: UpgradeRequest) -> Accept | Refuse:
            if self._draining:
                return refusal
            decision = await connect(request)
            if isinstance(decision, Refuse):
                return decision
            if self._draining:  # the drain started while the token was being checked
                if decision.on_closed is not None:
                    decision.on_closed()  # give the per-IP slot back: no connection will run
                return refusal
            factory = decision.handler

            def handler(transport: Transport) -> SocketHandler:
                tracked = _Tracked(self, factory(transport), transport)
                self._sockets[tracked] = None
                return tracked

            return Accept(handler=handler, subprotocol=decision.subprotocol, on_closed=decision.on_closed)

        return tracked_connect

    async def drain(self) -> DrainReport:
        """Refuse new sockets, then move the open ones (see the module docstring). Returns when
        every socket is gone or `flush_timeout` after the last batch, whichever is first."""
        self._draining = True
        config = self.config
        started = trio.current_time()
        snapshot = list(self._sockets)
        schedule = config.schedule(len(snapshot))
        _log.warning(
            "draining %d sockets in %d batches over %gs (close %d)",
            len(snapshot),
            len(schedule),
            config.window,
            CLOSE_DRAINING,
        )
        position = 0
        for offset, size in schedule:
            await trio.sleep_until(started + offset)
            for tracked in snapshot[position : position + size]:
                self._close(tracked)
            position += size
        for tracked in list(self._sockets):  # accepted during the batches
            self._close(tracked)
        with trio.move_on_after(config.flush_timeout):
            await self._wait_empty()
        report = DrainReport(len(snapshot), len(schedule), trio.current_time() - started, len(self._sockets))
        _log.warning(
            "drain done: %d sockets in %d batches, %.3fs, %d left open",
            report.sockets,
            report.batches,
            report.duration,
            report.left_open,
        )
        return report

    def _close(self, tracked: _Tracked) -> None:
        if tracked.closing:
            return
        tracked.closing = True
        socket = tracked.inner
        if isinstance(socket, PhoenixSocket):
            topic = f"user:{socket.identity.user_id}"
            if topic in socket.topics:
                low = self.config.retry_after_ms // 2
                payload = {"reason": "draining", "retry_after_ms": random.randint(low, self.config.retry_after_ms)}
                frame = text_frame(socket.serializer.encode(Message(topic, RECONNECT_REQUIRED, payload)))
                tracked.transport.send(frame)
        if tracked.busy:
            tracked.pending = True  # closed by the handler's end: its reply goes out first
        else:
            tracked.transport.close(CLOSE_DRAINING, "draining")

    async def _wait_empty(self) -> None:
        while self._sockets:
            self._empty = trio.Event()
            await self._empty.wait()

    def _forget(self, tracked: _Tracked) -> None:
        self._sockets.pop(tracked, None)
        if not self._sockets and self._empty is not None:
            self._empty.set()
