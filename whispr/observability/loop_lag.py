"""Event-loop lag: how late the Trio scheduler wakes a task that asked to sleep.

A task that sleeps `interval` seconds and wakes up `interval + x` seconds later was kept waiting
`x` seconds by other tasks hogging the loop (or by the host starving the process). That `x` is
emitted as `telemetry.LOOP_LAG {lag}` on every tick; `metrics.py` turns it into the
`whispr_event_loop_lag_seconds` histogram. Time is read from `trio.current_time()`, so tests drive
it with `trio.testing.MockClock`.
"""

from __future__ import annotations

import trio

from whispr.observability import telemetry

__all__ = ["measure_loop_lag"]


async def measure_loop_lag(
    interval: float = 0.5,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Emit LOOP_LAG every `interval` seconds until cancelled.

    Reports `task_status.started()` before the first sleep. Never returns on its own.

    Raises:
        ValueError: `interval` is not positive.
    """
    if not interval > 0:
        raise ValueError(f"loop-lag interval must be positive, got {interval!r}")
    task_status.started()
    while True:
        asleep_at = trio.current_time()
        await trio.sleep(interval)
        lag = trio.current_time() - asleep_at - interval
        telemetry.emit(telemetry.LOOP_LAG, {"lag": max(0.0, lag)})
