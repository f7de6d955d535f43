"""Per-child cost of ``DynamicSupervisor`` (the gateway's connect path): ``python -m supervisors._bench [N]``.

Starts N trivial children that wait forever and prints CPU µs per start and traced bytes per child,
next to a bare ``nursery.start_soon`` task doing the same, so the supervision overhead shows.
CPU time is ``time.process_time`` with tracemalloc off; bytes come from a separate tracemalloc pass.
Prints figures only: timing is not asserted anywhere.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from .dynamic import DynamicSupervisor
from .spec import ChildSpec, Restart


async def _child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


async def _bare(nursery: trio.Nursery, n: int) -> None:
    for _ in range(n):
        nursery.start_soon(_child)
    await trio.testing.wait_all_tasks_blocked()


async def _awaited(nursery: trio.Nursery, n: int) -> None:
    dyn = DynamicSupervisor("bench", ChildSpec("child", _child, restart=Restart.TEMPORARY))
    await nursery.start(dyn.run)
    for i in range(n):
        await dyn.start_child(i)


async def _nowait(nursery: trio.Nursery, n: int) -> None:
    dyn = DynamicSupervisor("bench", ChildSpec("child", _child, restart=Restart.TEMPORARY))
    await nursery.start(dyn.run)
    for i in range(n):
        dyn.start_child_nowait(i)
    await trio.testing.wait_all_tasks_blocked()  # every child has run up to started()


Scenario = Callable[[trio.Nursery, int], Awaitable[None]]


def _measure(scenario: Scenario, n: int) -> tuple[float, float]:
    """Return (CPU µs per child, traced bytes per child) for ``n`` children."""

    async def timed() -> float:
        async with trio.open_nursery() as nursery:
            await trio.testing.wait_all_tasks_blocked()
            start = time.process_time()
            await scenario(nursery, n)
            elapsed = time.process_time() - start
            nursery.cancel_scope.cancel()
        return elapsed

    async def traced() -> int:
        async with trio.open_nursery() as nursery:
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            await scenario(nursery, n)
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
            nursery.cancel_scope.cancel()
        return used

    seconds = trio.run(timed)
    tracemalloc.start()
    try:
        used = trio.run(traced)
    finally:
        tracemalloc.stop()
    return seconds / n * 1e6, used / n


def report(n: int) -> list[str]:
    """Measure every scenario with ``n`` children; return one printable line per scenario."""
    lines = []
    for label, scenario in (
        ("bare trio task (baseline)", _bare),
        ("await start_child", _awaited),
        ("start_child_nowait", _nowait),
    ):
        micros, size = _measure(scenario, n)
        lines.append(f"{label:<28} {micros:7.1f} µs CPU per child  {size:7.0f} B per child  (N={n})")
    return lines


if __name__ == "__main__":
    for line in report(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000):
        print(line)
