"""``DynamicSupervisor``: many children of one shape, started at run time (OTP ``simple_one_for_one``).

Built for the gateway's hot path, one child per WebSocket connection:

- no task per child besides the child's own: each child runs in one wrapper task in the
  supervisor's nursery, and that same task runs its restarts;
- O(1) bookkeeping: one dict entry and one ``Child`` record (which is also the child's
  ``task_status``) per child;
- ``start_child_nowait`` never waits for readiness; ``start_child`` does.

Children are restarted one for one. On stop, every child is asked at once and given one shared
grace, as OTP's ``terminate_dynamic_children`` does: there is no start order to reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

import trio

from . import reports
from ._child import (
    Child,
    Exit,
    Reason,
    current_child,
    describe,
    is_normal,
    request_stop,
    run_once,
    terminate,
    trap_shutdown,
)
from .errors import MaxChildrenReached, MaxIntensityReached, StartError
from .intensity import RestartIntensity
from .spec import ChildSpec, InvalidChildSpec, InvalidSupervisorFlags, Restart, Shutdown, Strategy, SupervisorFlags
from .tree import ChildCounts, ChildInfo, count

__all__ = ["DynamicSupervisor"]


class _DynamicChild(Child):
    __slots__ = ("supervisor",)

    def __init__(self, supervisor: DynamicSupervisor, child_id: Hashable, args: tuple[object, ...]) -> None:
        super().__init__(child_id, supervisor.template, args)
        self.supervisor = supervisor

    def started(self, value: object = None) -> None:
        super().started(value)
        reports.progress(self.supervisor.name, self.id, self.spec, level=logging.DEBUG)


class DynamicSupervisor:
    """Supervises children started on demand from one template.

    Args:
        name: Names the supervisor in reports, errors and ``format_tree``.
        template: The children's spec; ``start_child`` appends its arguments to ``template.args``.
            ``template.id`` names the kind of child; each child has its own id.
        max_children: Refuse a child beyond this many (default: no limit).
        intensity: Restarts allowed within ``period`` seconds (default 1 in 5 s, OTP's).
        period: See ``intensity``.

    Raises:
        InvalidChildSpec: ``not_a_child_spec``.
        InvalidSupervisorFlags: ``invalid_max_children``, or from ``SupervisorFlags``.
    """

    def __init__(
        self,
        name: str,
        template: ChildSpec,
        *,
        max_children: int | None = None,
        intensity: int = 1,
        period: float = 5.0,
    ) -> None:
        if not isinstance(template, ChildSpec):
            raise InvalidChildSpec("not_a_child_spec", template)
        if max_children is not None and (
            not isinstance(max_children, int) or isinstance(max_children, bool) or max_children < 1
        ):
            raise InvalidSupervisorFlags("invalid_max_children", max_children)
        self.name = name
        self.template = template
        self.max_children = max_children
        self.flags = SupervisorFlags(Strategy.ONE_FOR_ONE, intensity, period)
        self.status = "stopped"
        self.restarts = 0
        # Invariant: every child whose wrapper task is alive, keyed by its id; its task removes it.
        self._children: dict[Hashable, _DynamicChild] = {}
        self._intensity = RestartIntensity(intensity, period)
        self._nursery: trio.Nursery | None = None
        # True from the stop request (or escalation) on: no new child, no restart.
        self._stopping = False
        self._wake = trio.Event()
        self._all_gone: trio.Event | None = None
        self._failure: MaxIntensityReached | None = None

    def child_spec(self, *, restart: Restart = Restart.PERMANENT) -> ChildSpec:
        """A spec that runs this supervisor as a child: id = name, shutdown = ``INFINITY`` (OTP's default)."""
        return ChildSpec(self.name, self.run, restart=restart, shutdown=Shutdown.INFINITY)

    async def run(self, *, task_status: trio.TaskStatus[DynamicSupervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Run with no children at first, and return once asked to stop.

        Blocks for the supervisor's lifetime; calls ``task_status.started(self)`` at once.

        Resource handling: when its parent (or ``run_tree``) stops it, it asks every child at once and
        cancels those still running after the template's grace, then returns. When cancelled from
        outside, every child is cancelled at once.

        Raises:
            MaxIntensityReached: restart intensity exceeded; every child was stopped first.
            RuntimeError: the supervisor is already running.
        """
        if self._nursery is not None:
            raise RuntimeError(f"dynamic supervisor {self.name!r} is already running")
        # OTP supervisors trap exits: a stop request from the parent is a message, not a cancel.
        stop = trap_shutdown() if current_child.get() is not None else trio.Event()
        self._stopping = False
        self._wake = trio.Event()
        self._failure = None
        self._all_gone = None
        self._intensity = RestartIntensity(self.flags.intensity, self.flags.period)
        self.restarts = 0
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._forward_stop, stop)
                self.status = "running"
                task_status.started(self)
                await self._wake.wait()
                await self._stop_all()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._stopping = True
            self.status = "stopped"
        if self._failure is not None:
            raise self._failure

    async def start_child(self, child_id: Hashable, *args: object) -> object:
        """Start a child and wait until it calls ``task_status.started(value)``; return ``value``.

        Blocks until the child is ready. Callable from any task of the same Trio run. If the
        caller is cancelled before the child is ready, the child is cancelled too.

        Raises:
            StartError: the child raised (or returned) before ``started()``; it is not restarted.
            MaxChildrenReached: ``max_children`` children are already running.
            InvalidChildSpec: ``duplicate_child_id``: a child with this id is running.
            RuntimeError: the supervisor is not running, or is stopping.
        """
        child = self._admit(child_id, args)
        assert self._nursery is not None
        try:
            await self._nursery.start(self._child_main, child, name=self.name)
        except Exception as exc:
            reports.start_error(self.name, child_id, self.template, describe(exc), exc)
            raise StartError(self.name, child_id, exc) from exc
        return child.value

    def start_child_nowait(self, child_id: Hashable, *args: object) -> None:
        """Start a child without waiting for it to be ready. Not blocking.

        A child that fails before ``started()`` gets a ``start_error`` report and is not restarted.

        Raises:
            MaxChildrenReached, InvalidChildSpec, RuntimeError: as ``start_child``.
        """
        child = self._admit(child_id, args)
        assert self._nursery is not None
        self._nursery.start_soon(self._child_main, child, name=self.name)

    async def terminate_child(self, child_id: Hashable) -> None:
        """Stop one child by the template's shutdown policy; it is not restarted (OTP ``terminate_child/2``).

        Blocks until the child's task has finished. If cancelled meanwhile, the child is cancelled at once.

        Raises:
            LookupError: no running child has this id.
        """
        child = self._children.get(child_id)
        if child is None:
            raise LookupError(f"dynamic supervisor {self.name!r} has no child {child_id!r}")
        await terminate(child)

    def which_children(self) -> list[ChildInfo]:
        """Every running child, oldest first. O(number of children); not blocking."""
        spec = self.template
        return [
            ChildInfo(
                child.id,
                "stopping" if child.stopping else "running" if child.has_started else "starting",
                child.value,
                spec.restart,
                spec.shutdown,
                child.restarts,
            )
            for child in self._children.values()
        ]

    def count_children(self) -> ChildCounts:
        """OTP ``count_children/1``. O(number of children); not blocking."""
        return count(self.which_children(), len(self._children))

    def summary(self) -> str:
        """One line for ``format_tree``: name, status, children and restarts."""
        limit = "no limit" if self.max_children is None else f"max {self.max_children}"
        return (
            f"DynamicSupervisor {self.name!r} {self.status}, {len(self._children)} {self.template.id!r} children "
            f"({limit}), restarts {self.restarts} ({len(self._intensity)} in window, max {self.flags.intensity} "
            f"per {self.flags.period:g}s)"
        )

    def lists_children(self) -> bool:
        return False  # thousands of connections: the tree dump shows the count only

    # -- inside the nursery ------------------------------------------------------------------------

    def _admit(self, child_id: Hashable, args: tuple[object, ...]) -> _DynamicChild:
        if self._nursery is None or self._stopping:
            raise RuntimeError(f"dynamic supervisor {self.name!r} is not running")
        children = self._children
        if child_id in children:
            raise InvalidChildSpec("duplicate_child_id", child_id)
        if self.max_children is not None and len(children) >= self.max_children:
            raise MaxChildrenReached(self.name, child_id, self.max_children)
        child = _DynamicChild(self, child_id, self.template.args + args if args else self.template.args)
        children[child_id] = child
        return child

    async def _forward_stop(self, stop: trio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _child_main(
        self, child: _DynamicChild, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        child.status = task_status
        current_child.set(child)
        reason: Reason = Exit.KILLED
        try:
            while True:
                reason = await run_once(child)
                if not self._handle_exit(child, reason):
                    break
                child.rearm()
        finally:
            del self._children[child.id]
            child.finish(reason)
            if self._all_gone is not None and not self._children:
                self._all_gone.set()

    def _handle_exit(self, child: _DynamicChild, reason: Reason) -> bool:
        """OTP ``do_restart/4`` for one child; True to run it again."""
        spec = child.spec
        exc = reason if isinstance(reason, Exception) else None
        if child.stopping:
            if exc is not None and not is_normal(reason):
                reports.shutdown_error(self.name, child.id, spec, describe(reason), exc)
            return False
        if not child.has_started:
            reports.start_error(self.name, child.id, spec, describe(reason), exc)
            if child.restarts == 0:
                return False  # a first start that fails is refused, not restarted
        if spec.restart is Restart.PERMANENT or (spec.restart is Restart.TRANSIENT and not is_normal(reason)):
            if self._stopping:
                return False
            allowed = self._intensity.record(trio.current_time())
            if child.has_started:
                action = "restarting" if allowed else "max restart intensity reached"
                reports.child_terminated(self.name, child.id, spec, describe(reason), exc, action)
            if not allowed:
                reports.escalation(self.name, child.id, spec, self.flags.intensity, self.flags.period)
                self._failure = MaxIntensityReached(self.name, child.id, self.flags.intensity, self.flags.period)
                self._failure.__cause__ = exc
                self._stopping = True
                self._wake.set()
                return False
            self.restarts += 1
            return True
        if child.has_started and not is_normal(reason):
            reports.child_terminated(self.name, child.id, spec, describe(reason), exc, "not restarted (temporary)")
        return False

    async def _stop_all(self) -> None:
        """Ask every child at once, wait one shared grace, cancel the rest (OTP ``terminate_dynamic_children``)."""
        self._stopping = True
        self.status = "stopping"
        if not self._children:
            return
        self._all_gone = trio.Event()
        asked = [request_stop(child) for child in list(self._children.values())]
        grace = self.template.shutdown
        if any(asked) and grace is not Shutdown.INFINITY:
            assert not isinstance(grace, Shutdown)
            with trio.move_on_after(grace):
                await self._all_gone.wait()
            for child in list(self._children.values()):
                child.scope.cancel()
        await self._all_gone.wait()
