"""``Supervisor``: a static list of children under one restart strategy (OTP ``supervisor``).

Rules
-----
- Children start left to right, each with ``await nursery.start(...)``: the next one starts only
  once the previous one called ``task_status.started()``. They stop right to left.
- A child's exit is handled by OTP ``do_restart/4``: ``PERMANENT`` is always restarted;
  ``TRANSIENT`` only after an abnormal exit; ``TEMPORARY`` never, and its spec is dropped. A normal
  exit is a return or ``ShutdownRequested``; every other exception is abnormal and reported.
- Each restart is recorded in one ``RestartIntensity`` per supervisor (not per child). When it is
  exceeded the supervisor stops every child right to left and raises ``MaxIntensityReached``.

Theory of operation
-------------------
Every child runs in a wrapper task in the supervisor's nursery, inside its own cancel scope. The
wrapper never lets the child's exception into the nursery: it records the exit reason and posts the
record on an unbounded channel. ``run()`` is a loop over that channel, so all restart decisions are
taken one at a time by the supervisor's own task, as ``handle_info({'EXIT', …})`` does in OTP. A stop
request from the parent (or ``run_tree``) arrives on the same channel.

Invariants
----------
- ``_running`` maps a child id to the record of its current run; a posted exit whose record is no
  longer there is stale (that child was already stopped as a sibling) and is ignored.
- ``_order`` is the start order of the specs still known in this run (``TEMPORARY`` ones leave it
  once they exit).

WARNING
-------
With strict exception groups anything raised inside ``async with open_nursery()`` reaches the
caller wrapped in an ``ExceptionGroup``. So ``run()`` decides inside the nursery, stops the children,
cancels the nursery, and raises ``StartError`` / ``MaxIntensityReached`` only *after* it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import trio

from . import reports
from ._child import Child, Reason, current_child, describe, is_normal, run_once, terminate, trap_shutdown
from .errors import MaxIntensityReached, StartError
from .intensity import RestartIntensity
from .spec import ChildSpec, InvalidChildSpec, Restart, Shutdown, Strategy, SupervisorFlags
from .tree import ChildCounts, ChildInfo, count

__all__ = ["Supervisor"]


class _Stop:
    """The parent asked this supervisor to stop."""


class _TryAgain:
    """A restart failed to start ``spec``; restart it again (OTP ``try_again_restart``)."""

    __slots__ = ("reason", "spec")

    def __init__(self, spec: ChildSpec, reason: Exception) -> None:
        self.spec = spec
        self.reason = reason


_Event = Child | _Stop | _TryAgain


class Supervisor:
    """Supervises a fixed list of children with one strategy and one restart intensity.

    Args:
        name: Names the supervisor in reports, errors and ``format_tree``.
        children: Child specs in start order; ids must be unique.
        strategy: ``Strategy.ONE_FOR_ONE`` (default), ``REST_FOR_ONE`` or ``ONE_FOR_ALL``.
        intensity: Restarts allowed within ``period`` seconds (default 1 in 5 s, OTP's).
        period: See ``intensity``.

    Raises:
        InvalidChildSpec: ``not_a_child_spec`` or ``duplicate_child_id``.
        InvalidSupervisorFlags: from ``SupervisorFlags``.
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 1,
        period: float = 5.0,
    ) -> None:
        self.name = name
        self.flags = SupervisorFlags(strategy, intensity, period)
        seen: set[str] = set()
        for spec in children:
            if not isinstance(spec, ChildSpec):
                raise InvalidChildSpec("not_a_child_spec", spec)
            if spec.id in seen:
                raise InvalidChildSpec("duplicate_child_id", spec.id)
            seen.add(spec.id)
        self.children: tuple[ChildSpec, ...] = tuple(children)
        self.status = "stopped"
        self.restarts = 0
        self._order: list[ChildSpec] = list(self.children)
        self._running: dict[str, Child] = {}
        self._restarts: dict[str, int] = {}
        self._intensity = RestartIntensity(intensity, period)
        self._nursery: trio.Nursery | None = None
        self._events: trio.MemorySendChannel[_Event] | None = None

    def child_spec(self, *, restart: Restart = Restart.PERMANENT) -> ChildSpec:
        """A spec that runs this supervisor as a child: id = name, shutdown = ``INFINITY`` (OTP's default)."""
        return ChildSpec(self.name, self.run, restart=restart, shutdown=Shutdown.INFINITY)

    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children, supervise them, and return once asked to stop.

        Blocks for the supervisor's lifetime. Calls ``task_status.started(self)`` once every child
        has started, so a parent supervisor starts its next child only then.

        Resource handling: when its parent supervisor (or ``run_tree``) stops it, it stops its
        children right to left by their shutdown policies and returns normally. When cancelled from
        outside, every child is cancelled at once, with no ordering or grace.

        Error handling: child exceptions never escape; they are reported and handled by the
        strategy. ``run()`` can be called again after it returned or raised; it starts afresh.

        Raises:
            StartError: a child failed to start during boot; the children already started were
                stopped right to left first.
            MaxIntensityReached: restart intensity exceeded; every child was stopped first.
            RuntimeError: the supervisor is already running.
        """
        if self._nursery is not None:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        # OTP supervisors trap exits: a stop request from the parent is a message, not a cancel.
        stop = trap_shutdown() if current_child.get() is not None else trio.Event()
        send, receive = trio.open_memory_channel[_Event](math.inf)
        self._events = send
        self._order = list(self.children)
        self._running = {}
        self._restarts = {spec.id: 0 for spec in self.children}
        self._intensity = RestartIntensity(self.flags.intensity, self.flags.period)
        self.restarts = 0
        self.status = "starting"
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._forward_stop, stop)
                failure = await self._start_children(list(self._order), boot=True)
                if failure is None:
                    self.status = "running"
                    task_status.started(self)
                    failure = await self._loop(receive)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._events = None
            self.status = "stopped"
        if failure is not None:
            raise failure

    def which_children(self) -> list[ChildInfo]:
        """Every known child in start order (OTP ``which_children/1``). Not blocking."""
        infos = []
        for spec in self._order:
            child = self._running.get(spec.id)
            if child is None:
                status, value = "not_running", None
            else:
                value = child.value
                if child.stopping:
                    status = "stopping"
                elif child.has_started:
                    status = "running"
                else:
                    status = "starting"
            infos.append(ChildInfo(spec.id, status, value, spec.restart, spec.shutdown, self._restarts.get(spec.id, 0)))
        return infos

    def count_children(self) -> ChildCounts:
        """OTP ``count_children/1``. Not blocking."""
        return count(self.which_children(), len(self._order))

    def summary(self) -> str:
        """One line for ``format_tree``: name, strategy, status and restarts."""
        return (
            f"Supervisor {self.name!r} {self.flags.strategy.value} {self.status}, restarts {self.restarts} "
            f"({len(self._intensity)} in window, max {self.flags.intensity} per {self.flags.period:g}s)"
        )

    def lists_children(self) -> bool:
        return True

    # -- inside the nursery ------------------------------------------------------------------------

    async def _forward_stop(self, stop: trio.Event) -> None:
        await stop.wait()
        self._post(_Stop())

    def _post(self, event: _Event) -> None:
        assert self._events is not None
        self._events.send_nowait(event)

    async def _child_main(self, child: Child, task_status: trio.TaskStatus[Any]) -> None:
        child.status = task_status
        current_child.set(child)
        reason = await run_once(child)
        child.finish(reason)
        if not child.stopping:
            self._post(child)  # OTP: the supervisor receives {'EXIT', Pid, Reason}

    async def _start_children(self, specs: list[ChildSpec], *, boot: bool) -> Exception | None:
        """Start ``specs`` left to right; return the boot failure, if any (OTP ``start_children``)."""
        assert self._nursery is not None
        for spec in specs:
            child = Child(spec.id, spec, spec.args)
            self._running[spec.id] = child
            try:
                await self._nursery.start(self._child_main, child, name=f"{self.name}/{spec.id}")
            except Exception as exc:
                del self._running[spec.id]
                reports.start_error(self.name, spec.id, spec, describe(exc), exc)
                if not boot:
                    # OTP restart failure: counted as another restart, tried again from the loop.
                    self._post(_TryAgain(spec, exc))
                    return None
                # OTP: a boot failure stops what already started and fails {shutdown, {failed_to_start_child, …}}.
                await self._stop_all()
                failure = StartError(self.name, spec.id, exc)
                failure.__cause__ = exc
                return failure
            reports.progress(self.name, spec.id, spec)
        return None

    async def _loop(self, receive: trio.MemoryReceiveChannel[_Event]) -> MaxIntensityReached | None:
        while True:
            event = await receive.receive()
            if isinstance(event, _Stop):
                await self._stop_all()
                return None
            if isinstance(event, _TryAgain):
                allowed = self._intensity.record(trio.current_time())
                failure = await self._restart(event.spec, event.reason, allowed)
            elif self._running.get(event.spec.id) is not event:
                continue  # stale: that run was already stopped as a sibling
            else:
                failure = await self._child_exited(event)
            if failure is not None:
                return failure

    async def _child_exited(self, child: Child) -> MaxIntensityReached | None:
        """OTP ``do_restart/4``."""
        spec, reason = child.spec, child.reason
        del self._running[spec.id]
        exc = reason if isinstance(reason, Exception) else None
        if spec.restart is Restart.PERMANENT or (spec.restart is Restart.TRANSIENT and not is_normal(reason)):
            allowed = self._intensity.record(trio.current_time())
            if allowed:
                action = (
                    f"restarting ({len(self._intensity)} of max {self.flags.intensity} restarts "
                    f"in {self.flags.period:g}s)"
                )
            else:
                action = "max restart intensity reached"
            reports.child_terminated(self.name, spec.id, spec, describe(reason), exc, action)
            return await self._restart(spec, reason, allowed)
        if not is_normal(reason):
            reports.child_terminated(self.name, spec.id, spec, describe(reason), exc, "not restarted (temporary)")
        if spec.restart is Restart.TEMPORARY:
            self._order.remove(spec)
        return None

    async def _restart(self, spec: ChildSpec, reason: Reason, allowed: bool) -> MaxIntensityReached | None:
        """OTP ``restart/2``: give up when the intensity was exceeded, else restart by the strategy."""
        if not allowed:
            reports.escalation(self.name, spec.id, spec, self.flags.intensity, self.flags.period)
            await self._stop_all()
            failure = MaxIntensityReached(self.name, spec.id, self.flags.intensity, self.flags.period)
            if isinstance(reason, Exception):
                failure.__cause__ = reason
            return failure
        self.restarts += 1
        index = self._order.index(spec)
        strategy = self.flags.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            targets = [spec]
        elif strategy is Strategy.REST_FOR_ONE:
            targets = self._order[index:]
        else:
            targets = list(self._order)
        self.status = "restarting"
        for target in reversed(targets):
            await self._stop(target)
            if target.restart is Restart.TEMPORARY:
                # OTP terminate_children/2: temporary children stopped for a sibling are not restarted.
                self._order.remove(target)
        targets = [target for target in targets if target.restart is not Restart.TEMPORARY]
        for target in targets:
            self._restarts[target.id] += 1
        await self._start_children(targets, boot=False)
        self.status = "running"
        return None

    async def _stop(self, spec: ChildSpec) -> None:
        child = self._running.pop(spec.id, None)
        if child is None:
            return
        reason = await terminate(child)
        if not is_normal(reason):
            assert isinstance(reason, Exception)
            reports.shutdown_error(self.name, spec.id, spec, describe(reason), reason)

    async def _stop_all(self) -> None:
        """Stop every running child, right to left (OTP ``terminate_children/2``)."""
        self.status = "stopping"
        for spec in reversed(self._order):
            await self._stop(spec)
