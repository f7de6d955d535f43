"""One supervised child: its record, one run of its start function, and how it is stopped.

Shared by ``Supervisor``, ``DynamicSupervisor`` and ``run_tree``. The record doubles as the
child's ``task_status`` so a start costs no extra object on the ``DynamicSupervisor`` hot path.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from contextvars import ContextVar
from typing import Any

import trio

from .errors import ShutdownRequested
from .spec import ChildSpec, Shutdown

__all__ = [
    "Child",
    "Exit",
    "Reason",
    "current_child",
    "describe",
    "is_normal",
    "request_stop",
    "run_once",
    "terminate",
    "trap_shutdown",
]


class Exit(enum.Enum):
    """Exit reasons that are not exceptions."""

    #: The start function returned.
    NORMAL = "normal"
    #: The supervisor cancelled the child (brutal kill, or the grace ran out).
    KILLED = "killed"


#: How one run of a child ended: an ``Exit`` or the exception it raised.
Reason = Exit | Exception

#: The child whose task (or a task it spawned) is running; read by ``trap_shutdown()``.
current_child: ContextVar[Child | None] = ContextVar("supervisors.current_child", default=None)


class Child:
    """Bookkeeping for one child; also the ``task_status`` passed to its start function."""

    __slots__ = (
        "args",
        "done",
        "finished",
        "has_started",
        "id",
        "reason",
        "restarts",
        "scope",
        "spec",
        "status",
        "stop_requested",
        "stopping",
        "value",
    )

    def __init__(self, child_id: Hashable, spec: ChildSpec, args: tuple[object, ...]) -> None:
        self.id = child_id
        self.spec = spec
        self.args = args
        # Invariant: a fresh scope per run of the start function; only the supervisor cancels it.
        self.scope = trio.CancelScope()
        # Whoever awaits readiness (nursery.start), until the child calls started().
        self.status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
        self.value: object = None
        self.has_started = False
        # Not None once the child traps exits: its supervisor then asks before it cancels.
        self.stop_requested: trio.Event | None = None
        # True once the supervisor decided to stop this child: its exit is expected.
        self.stopping = False
        self.finished = False
        self.reason: Reason = Exit.NORMAL
        self.done: trio.Event | None = None  # created only if someone waits for the exit
        self.restarts = 0

    def started(self, value: object = None) -> None:
        """``task_status.started(value)``: the child can serve; wakes whoever awaits readiness."""
        self.value = value
        self.has_started = True
        status, self.status = self.status, trio.TASK_STATUS_IGNORED
        status.started(value)

    def rearm(self) -> None:
        """Prepare the record for another run of the start function (a restart in place)."""
        self.scope = trio.CancelScope()
        self.has_started = False
        self.stop_requested = None
        self.restarts += 1

    def finish(self, reason: Reason) -> None:
        self.reason = reason
        self.finished = True
        if self.done is not None:
            self.done.set()

    async def wait_finished(self) -> None:
        if not self.finished:
            if self.done is None:
                self.done = trio.Event()
            await self.done.wait()


def trap_shutdown() -> trio.Event:
    """Opt the calling child in to graceful shutdown; return the event its supervisor will set.

    OTP's ``process_flag(trap_exit, true)``: when its supervisor stops a child that has called
    this, it sets the event and waits for the child to exit for the child's ``shutdown`` grace (or
    forever with ``Shutdown.INFINITY``) before cancelling it. A child that never calls it, or one with
    ``Shutdown.BRUTAL_KILL``, is cancelled at once. Works from any task the child spawned. Each
    run of a restarted child must call it again. Not blocking.

    Raises:
        RuntimeError: when not called from inside a supervised child.
    """
    child = current_child.get()
    if child is None:
        raise RuntimeError("trap_shutdown() must be called from inside a supervised child")
    if child.stop_requested is None:
        child.stop_requested = trio.Event()
    return child.stop_requested


async def run_once(child: Child) -> Reason:
    """Run ``child``'s start function once, in ``child.scope``, and say how it ended.

    Never raises the child's exception after ``started()``: it becomes the returned reason.

    Raises:
        Exception: the child's own exception, or a ``RuntimeError`` if it returned or was stopped,
            before ``started()`` while a starter awaits readiness (it surfaces from ``nursery.start``).
    """
    reason: Reason
    try:
        with child.scope:
            await child.spec.start(*child.args, task_status=child)
    except Exception as exc:
        reason = exc
    else:
        reason = Exit.KILLED if child.scope.cancelled_caught else Exit.NORMAL
    if not child.has_started and child.status is not trio.TASK_STATUS_IGNORED:
        # OTP start_link returning {error, Reason}: the starter gets the failure.
        if isinstance(reason, Exception):
            raise reason
        raise RuntimeError(f"child {child.id!r} exited ({reason.value}) before calling task_status.started()")
    return reason


def request_stop(child: Child) -> bool:
    """Start stopping ``child`` (OTP ``shutdown/2``, first half); True if it was asked, not cancelled."""
    child.stopping = True
    if child.finished:
        return False
    if child.spec.shutdown is Shutdown.BRUTAL_KILL or child.stop_requested is None:
        # exit(Child, kill); and a child that does not trap exits dies at once on `shutdown` too.
        child.scope.cancel()
        return False
    child.stop_requested.set()  # exit(Child, shutdown)
    return True


async def terminate(child: Child) -> Reason:
    """Stop ``child`` by its shutdown policy and return its exit reason (OTP ``shutdown/2``).

    Blocks until the child's task has finished: for ``BRUTAL_KILL`` (or a child that does not trap
    exits) it is cancelled at once; otherwise it is asked, given its grace, then cancelled. A child
    shielding itself from cancellation blocks this: Trio has no ``kill``. If the caller is cancelled
    while waiting, the child is cancelled at once and not waited for.
    """
    policy = child.spec.shutdown
    try:
        if request_stop(child) and policy is not Shutdown.INFINITY:
            assert not isinstance(policy, Shutdown)
            with trio.move_on_after(policy):
                await child.wait_finished()
            child.scope.cancel()  # no exit within the grace: exit(Child, kill)
        await child.wait_finished()
    finally:
        if not child.finished:
            child.scope.cancel()
    return child.reason


def is_normal(reason: Reason) -> bool:
    """OTP: ``normal`` and ``shutdown`` exits are normal; a ``TRANSIENT`` child is not restarted."""
    return not isinstance(reason, Exception) or isinstance(reason, ShutdownRequested)


def describe(reason: Reason) -> str:
    """The reason as reports show it: ``normal``, ``killed``, ``shutdown`` or the exception's repr."""
    if isinstance(reason, Exit):
        return reason.value
    if isinstance(reason, ShutdownRequested):
        return f"shutdown ({reason})" if str(reason) else "shutdown"
    return repr(reason)
