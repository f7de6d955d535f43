"""Run a supervision tree until SIGTERM or SIGINT, then stop it gracefully within a grace period."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import trio

from ._child import Child, Exit, current_child, describe, is_normal, run_once, terminate
from .dynamic import DynamicSupervisor
from .reports import logger
from .spec import ChildSpec
from .supervisor import Supervisor

__all__ = ["run_tree"]


async def run_tree(
    root: Supervisor | DynamicSupervisor,
    grace: float,
    *,
    task_status: trio.TaskStatus[Supervisor | DynamicSupervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``root`` until the process gets SIGTERM or SIGINT, then stop the tree within ``grace`` seconds.

    The root is treated as the only child of the application (OTP ``application:stop``): on the first
    signal it is asked to stop, so every supervisor stops its children right to left by their own
    shutdown policies; whatever still runs after ``grace`` seconds in total is cancelled.

    Blocks until the tree has stopped. Calls ``task_status.started(root)`` once the root has started
    and the signals are being caught. Must run in the main thread (``trio.open_signal_receiver``);
    while it runs, SIGINT no longer raises ``KeyboardInterrupt``.

    Raises:
        InvalidChildSpec: ``grace`` is negative or not a number.
        StartError, MaxIntensityReached: from ``root.run()``, after the tree has stopped.
    """
    slot = Child(root.name, ChildSpec(root.name, root.run, shutdown=grace), ())
    slot.status = task_status
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, slot, grace)
            token = current_child.set(slot)
            try:
                reason = await run_once(slot)
            except Exception as exc:  # the root failed to start
                reason = exc
            finally:
                current_child.reset(token)
            slot.finish(reason)
            nursery.cancel_scope.cancel()
    if not is_normal(reason):
        assert isinstance(reason, Exception)
        raise reason
    if reason is Exit.KILLED:
        logger.warning("supervisors: tree %r cancelled: it did not stop within the %gs grace", root.name, grace)
    else:
        logger.info("supervisors: tree %r stopped (%s)", root.name, describe(reason))


async def _stop_on_signal(signals: AsyncIterator[int], slot: Child, grace: float) -> None:
    async for signum in signals:
        logger.warning(
            "supervisors: %s received; stopping tree %r (grace %gs)", signal.Signals(signum).name, slot.id, grace
        )
        await terminate(slot)
        return
