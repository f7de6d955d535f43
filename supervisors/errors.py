"""Exceptions a supervisor raises to its caller, and the one a child raises to exit normally."""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["MaxChildrenReached", "MaxIntensityReached", "ShutdownRequested", "StartError"]


class ShutdownRequested(Exception):
    """Raised by a child to exit normally (OTP exit reason ``shutdown``).

    Like a clean return, it is a normal exit: a ``TRANSIENT`` child is not restarted and no
    ``child_terminated`` report is written. A ``PERMANENT`` child is still restarted.
    """


class StartError(Exception):
    """A child raised (or returned) before calling ``task_status.started()`` (OTP ``start_error``).

    Raised ``from`` the child's exception. Attributes: ``supervisor`` and ``child_id`` name the
    supervisor and the child, ``reason`` is the child's exception.
    """

    def __init__(self, supervisor: str, child_id: Hashable, reason: BaseException) -> None:
        super().__init__(f"supervisor {supervisor!r}: child {child_id!r} failed to start: {reason!r}")
        self.supervisor = supervisor
        self.child_id = child_id
        self.reason = reason


class MaxIntensityReached(Exception):
    """A supervisor exceeded its restart intensity, stopped its children and gave up (escalation).

    Raised ``from`` the offending child's last exit reason when it was an exception. Attributes:
    ``supervisor``, ``child_id`` (the offender), ``intensity`` and ``period``.
    """

    def __init__(self, supervisor: str, child_id: Hashable, intensity: int, period: float) -> None:
        super().__init__(
            f"supervisor {supervisor!r} reached max restart intensity "
            f"({intensity} in {period:g}s); offender: child {child_id!r}"
        )
        self.supervisor = supervisor
        self.child_id = child_id
        self.intensity = intensity
        self.period = period


class MaxChildrenReached(Exception):
    """A ``DynamicSupervisor`` refused a child because it already runs ``max_children``."""

    def __init__(self, supervisor: str, child_id: Hashable, max_children: int) -> None:
        super().__init__(
            f"dynamic supervisor {supervisor!r} refused child {child_id!r}: max_children={max_children} reached"
        )
        self.supervisor = supervisor
        self.child_id = child_id
        self.max_children = max_children
