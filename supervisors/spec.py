"""Child specifications and supervisor flags, validated when they are built.

OTP's ``check_childspec/1`` rejects a bad specification before anything starts, with a tagged
reason (``missing_id``, ``invalid_restart``, ``invalid_shutdown`` …). Here ``ChildSpec`` and
``SupervisorFlags`` do the same in ``__post_init__`` and raise ``InvalidChildSpec`` /
``InvalidSupervisorFlags`` carrying the reason and the offending value.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = [
    "ChildSpec",
    "InvalidChildSpec",
    "InvalidSupervisorFlags",
    "Restart",
    "Shutdown",
    "ShutdownPolicy",
    "Strategy",
    "SupervisorFlags",
]


class Restart(enum.Enum):
    """When a terminated child is restarted (OTP ``restart``)."""

    #: Always restarted, whatever the exit reason.
    PERMANENT = "permanent"
    #: Restarted only after an abnormal exit (an exception other than ``ShutdownRequested``).
    TRANSIENT = "transient"
    #: Never restarted; its specification is forgotten once it exits.
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them terminates (OTP ``strategy``)."""

    #: Restart only the child that terminated.
    ONE_FOR_ONE = "one_for_one"
    #: Restart the child that terminated and every child started after it.
    REST_FOR_ONE = "rest_for_one"
    #: Restart every child.
    ONE_FOR_ALL = "one_for_all"


class Shutdown(enum.Enum):
    """The non-numeric shutdown policies (OTP ``shutdown``); a number is a grace in seconds."""

    #: Cancel the child at once, without a graceful request.
    BRUTAL_KILL = "brutal_kill"
    #: Request a graceful stop and wait for it as long as it takes (the default for supervisors).
    INFINITY = "infinity"


#: Seconds of grace after the stop request before the child is cancelled, or a ``Shutdown``.
ShutdownPolicy = float | Shutdown


class InvalidChildSpec(ValueError):
    """A child specification was rejected; ``reason`` says why and ``value`` is what was given."""

    def __init__(self, reason: str, value: object) -> None:
        super().__init__(f"invalid child spec: {reason} (got {value!r})")
        self.reason = reason
        self.value = value


class InvalidSupervisorFlags(ValueError):
    """Supervisor flags were rejected; ``reason`` says why and ``value`` is what was given."""

    def __init__(self, reason: str, value: object) -> None:
        super().__init__(f"invalid supervisor flags: {reason} (got {value!r})")
        self.reason = reason
        self.value = value


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start, restart and stop one child.

    Attributes:
        id: Names the child in its supervisor, in reports and in ``which_children()``; unique per
            supervisor. For a ``DynamicSupervisor`` template it names the kind of child.
        start: ``async def start(*args, task_status)``. The child counts as started when it calls
            ``task_status.started(value)``, i.e. once it can serve (OTP ``start_link`` returning
            ``{ok, Pid}``); ``value`` is reported by ``which_children()``.
        args: Positional arguments for ``start``.
        restart: ``Restart.PERMANENT`` (default), ``TRANSIENT`` or ``TEMPORARY``.
        shutdown: Seconds of grace (default 5.0, OTP's default for workers), ``Shutdown.BRUTAL_KILL``
            or ``Shutdown.INFINITY`` (use it for supervisors, as OTP does).

    Raises:
        InvalidChildSpec: ``missing_id``, ``invalid_id``, ``invalid_start``, ``invalid_args``,
            ``invalid_restart``, ``invalid_shutdown`` or ``negative_shutdown``.
    """

    id: str
    start: Callable[..., Awaitable[object]]
    args: tuple[object, ...] = ()
    restart: Restart = Restart.PERMANENT
    shutdown: ShutdownPolicy = 5.0

    def __post_init__(self) -> None:
        if self.id is None or self.id == "":
            raise InvalidChildSpec("missing_id", self.id)
        if not isinstance(self.id, str):
            raise InvalidChildSpec("invalid_id", self.id)
        if not callable(self.start):
            raise InvalidChildSpec("invalid_start", self.start)
        if not isinstance(self.args, tuple):
            raise InvalidChildSpec("invalid_args", self.args)
        if not isinstance(self.restart, Restart):
            raise InvalidChildSpec("invalid_restart", self.restart)
        if not isinstance(self.shutdown, Shutdown):
            if not _is_real(self.shutdown) or not math.isfinite(self.shutdown):
                raise InvalidChildSpec("invalid_shutdown", self.shutdown)
            if self.shutdown < 0:
                raise InvalidChildSpec("negative_shutdown", self.shutdown)


@dataclass(frozen=True, slots=True)
class SupervisorFlags:
    """A supervisor's strategy and restart intensity (OTP ``sup_flags()``).

    Attributes:
        strategy: Default ``Strategy.ONE_FOR_ONE``.
        intensity: Restarts allowed within ``period``; one more and the supervisor gives up.
            Default 1, OTP's default.
        period: The sliding window in seconds. Default 5.0, OTP's default: a child that crashes
            twice within five seconds is taken as broken, and the fault is escalated to a level
            that can reset more state, instead of being retried in a tight loop.

    Raises:
        InvalidSupervisorFlags: ``invalid_strategy``, ``invalid_intensity`` or ``invalid_period``.
    """

    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 1
    period: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Strategy):
            raise InvalidSupervisorFlags("invalid_strategy", self.strategy)
        if not isinstance(self.intensity, int) or isinstance(self.intensity, bool) or self.intensity < 0:
            raise InvalidSupervisorFlags("invalid_intensity", self.intensity)
        if not _is_real(self.period) or not math.isfinite(self.period) or self.period <= 0:
            raise InvalidSupervisorFlags("invalid_period", self.period)
