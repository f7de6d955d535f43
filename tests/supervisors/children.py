"""Test children driven from the test, recording what happens to them at virtual times."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from supervisors import ChildSpec, Restart, Shutdown, ShutdownPolicy, ShutdownRequested, trap_shutdown


class Boom(Exception):
    """A child crash."""


@dataclass
class _Run:
    """One run of one child: the test tells it how to exit."""

    how: str | None = None
    event: trio.Event = field(default_factory=trio.Event)


class Fleet:
    """Children that start, then wait for the test to say how to exit.

    ``events`` records ``(time, what, id)`` with ``what`` in start / exit / cancelled / stop_requested.
    ``on_stop`` says what a trapping child does when asked to stop: ``exit`` (returns), ``ignore``
    (keeps running until cancelled), ``raise`` (raises ``Boom``) or a number of seconds it takes.
    """

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.runs: dict[str, _Run] = {}

    def spec(
        self,
        child_id: str,
        *,
        restart: Restart = Restart.PERMANENT,
        shutdown: ShutdownPolicy = 5.0,
        trap: bool = False,
        on_stop: str | float = "exit",
    ) -> ChildSpec:
        return ChildSpec(child_id, self.child, (child_id, trap, on_stop), restart=restart, shutdown=shutdown)

    def log(self, what: str, child_id: str) -> None:
        self.events.append((trio.current_time(), what, child_id))

    def what(self, kind: str) -> list[str]:
        """Ids of the children with events of ``kind``, in order."""
        return [child_id for _, what, child_id in self.events if what == kind]

    def exit(self, child_id: str, how: str) -> None:
        """Make the current run of ``child_id`` exit: ``normal``, ``crash`` or ``shutdown``."""
        run = self.runs[child_id]
        run.how = how
        run.event.set()

    async def child(
        self, child_id: str, trap: bool, on_stop: str | float, *, task_status: trio.TaskStatus[str]
    ) -> None:
        run = self.runs[child_id] = _Run()
        stop = trap_shutdown() if trap else None
        self.log("start", child_id)
        task_status.started(child_id)
        try:
            async with trio.open_nursery() as nursery:
                if stop is not None:
                    nursery.start_soon(self._watch, stop, run, nursery.cancel_scope)
                await run.event.wait()
                nursery.cancel_scope.cancel()
            if run.how == "stop_requested":
                self.log("stop_requested", child_id)
                if on_stop == "ignore":
                    await trio.sleep_forever()
                if on_stop == "raise":
                    raise Boom(f"{child_id} failed to stop")
                if not isinstance(on_stop, str):
                    await trio.sleep(on_stop)
        except* trio.Cancelled:
            self.log("cancelled", child_id)
            raise
        finally:
            self.log("exit", child_id)
        if run.how == "crash":
            raise Boom(child_id)
        if run.how == "shutdown":
            raise ShutdownRequested

    @staticmethod
    async def _watch(stop: trio.Event, run: _Run, scope: trio.CancelScope) -> None:
        await stop.wait()
        run.how = "stop_requested"
        scope.cancel()


async def crasher(log: list[float], delay: float = 1.0, *, task_status: trio.TaskStatus[None]) -> None:
    """Starts (recording the time), then crashes ``delay`` seconds later."""
    log.append(trio.current_time())
    task_status.started()
    await trio.sleep(delay)
    raise Boom("crasher")


async def idle(*args: object, task_status: trio.TaskStatus[object]) -> None:
    """Starts with its first argument as value, then waits forever."""
    task_status.started(args[0] if args else None)
    await trio.sleep_forever()


BRUTAL = Shutdown.BRUTAL_KILL
