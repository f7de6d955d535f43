"""Supervisor reports as telemetry, so restarts are counted without parsing logs.

`supervisors/` imports nothing from whispr, so it cannot emit telemetry itself. The app bridges the
two once at boot:

    supervisors.reports.add_report_listener(report_to_telemetry)

Each error report (`child_terminated`, `start_error`, `shutdown_error`, `shutdown`) becomes one
`SUPERVISOR_RESTART {} {supervisor, child, context}`, which `Metrics` counts in
`whispr_supervisor_restarts_total`; progress reports (a child started) are ignored, so the
per-socket starts of the dynamic socket supervisor cost one dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping

from whispr.observability import telemetry

__all__ = ["report_to_telemetry"]


def report_to_telemetry(report: Mapping[str, object]) -> None:
    """Emit SUPERVISOR_RESTART for a supervisor report (schema: `supervisors/reports.py`), unless progress."""
    context = report.get("error_context")
    if context == "progress":
        return
    offender = report.get("offender")
    child = offender.get("id") if isinstance(offender, Mapping) else None
    telemetry.emit(
        telemetry.SUPERVISOR_RESTART,
        metadata={"supervisor": report.get("supervisor"), "child": child, "context": context},
    )
