"""OTP-style supervisor reports on logger ``supervisors`` (SASL ``supervisor_report`` / ``progress``).

Every report is one readable line, plus the traceback through ``exc_info`` when the reason is an
exception, and carries the same structured fields in ``extra={"report": Report}``:

- ``supervisor``: the supervisor's name;
- ``error_context``: ``progress`` (a child started), ``child_terminated``, ``start_error``,
  ``shutdown_error`` or ``shutdown`` (OTP's name for the escalation: max restart intensity reached);
- ``reason``: ``normal``, ``shutdown``, ``killed`` or the exception's ``repr``; ``None`` for progress;
- ``offender``: ``{"id", "restart", "shutdown"}`` of the child concerned.

Levels: ERROR for the four error contexts, INFO for progress, DEBUG for the progress of
``DynamicSupervisor`` children (one per connection would flood INFO).

Listeners added with ``add_report_listener`` receive every report dict, whatever the log level, so
metrics count restarts without parsing logs. A listener that raises is logged and skipped: a broken
metric must not take the tree down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Literal, TypedDict

from .spec import ChildSpec, Shutdown

__all__ = ["Offender", "Report", "ReportListener", "add_report_listener", "logger", "remove_report_listener"]

logger = logging.getLogger("supervisors")

ErrorContext = Literal["progress", "child_terminated", "start_error", "shutdown_error", "shutdown"]


class Offender(TypedDict):
    id: Hashable
    restart: str
    shutdown: float | str


class Report(TypedDict):
    supervisor: str
    error_context: ErrorContext
    reason: str | None
    offender: Offender


ReportListener = Callable[[Report], None]

_listeners: list[ReportListener] = []


def add_report_listener(listener: ReportListener) -> None:
    """Call ``listener(report)`` for every report from now on (synchronously, in the supervisor's task)."""
    _listeners.append(listener)


def remove_report_listener(listener: ReportListener) -> None:
    """Stop calling ``listener``. Raises ``ValueError`` if it was not added."""
    _listeners.remove(listener)


def _shutdown_text(spec: ChildSpec) -> str:
    policy = spec.shutdown
    return policy.value if isinstance(policy, Shutdown) else f"{policy:g}s"


def _emit(
    level: int,
    context: ErrorContext,
    supervisor: str,
    child_id: Hashable,
    spec: ChildSpec,
    reason: str | None,
    exc: BaseException | None,
    message: str,
) -> None:
    # Build nothing unless someone will read it: progress reports sit on the connect hot path.
    if not _listeners and not logger.isEnabledFor(level):
        return
    shutdown: float | str = spec.shutdown.value if isinstance(spec.shutdown, Shutdown) else spec.shutdown
    report: Report = {
        "supervisor": supervisor,
        "error_context": context,
        "reason": reason,
        "offender": {"id": child_id, "restart": spec.restart.value, "shutdown": shutdown},
    }
    logger.log(
        level,
        "supervisor %r: child %r (%s, shutdown %s) %s",
        supervisor,
        child_id,
        spec.restart.value,
        _shutdown_text(spec),
        message,
        exc_info=exc,
        extra={"report": report},
    )
    for listener in tuple(_listeners):
        try:
            listener(report)
        except Exception:
            logger.exception("supervisors: report listener %r failed", listener)


def progress(supervisor: str, child_id: Hashable, spec: ChildSpec, *, level: int = logging.INFO) -> None:
    """Report that a child called ``task_status.started()``."""
    _emit(level, "progress", supervisor, child_id, spec, None, None, "started")


def child_terminated(
    supervisor: str, child_id: Hashable, spec: ChildSpec, reason: str, exc: Exception | None, action: str
) -> None:
    """Report an exit the supervisor did not ask for; ``action`` says what it does about it."""
    _emit(logging.ERROR, "child_terminated", supervisor, child_id, spec, reason, exc, f"terminated: {reason}; {action}")


def start_error(supervisor: str, child_id: Hashable, spec: ChildSpec, reason: str, exc: Exception | None) -> None:
    """Report a child that raised or returned before calling ``task_status.started()``."""
    _emit(logging.ERROR, "start_error", supervisor, child_id, spec, reason, exc, f"failed to start: {reason}")


def shutdown_error(supervisor: str, child_id: Hashable, spec: ChildSpec, reason: str, exc: Exception) -> None:
    """Report a child that raised while it was being stopped."""
    _emit(
        logging.ERROR,
        "shutdown_error",
        supervisor,
        child_id,
        spec,
        reason,
        exc,
        f"raised while shutting down: {reason}",
    )


def escalation(supervisor: str, child_id: Hashable, spec: ChildSpec, intensity: int, period: float) -> None:
    """Report that the supervisor gives up (OTP ``shutdown``, ``reached_max_restart_intensity``)."""
    _emit(
        logging.ERROR,
        "shutdown",
        supervisor,
        child_id,
        spec,
        "reached_max_restart_intensity",
        None,
        f"exceeded max restart intensity ({intensity} in {period:g}s); "
        "stopping all children and escalating to the parent",
    )
