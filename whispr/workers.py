"""`whispr serve --workers N`: N node processes sharing one port, supervised by the parent.

Each worker is a full node (`whispr serve`, its own supervision tree and event loop, one core's
worth of work) with its own node id `<node_id>-w<i>`, bound to the same port with SO_REUSEPORT:
the kernel spreads new connections over the workers by a hash of the connection's addresses.
Workers share nothing in memory, so N > 1 needs what several nodes need: a shared PostgreSQL
store and Redis (`check_workers` refuses the embedded SQLite / in-process default, where each
worker would be a separate gateway: a message sent through one would not reach sockets on another).

The parent (no event loop work of its own beyond this):
- starts the workers (`python -m whispr serve ... --node-id <id>-w<i> --reuse-port`);
- restarts a worker that exits while the parent is not stopping (after `RESTART_DELAY`), giving
  up, and stopping the others, after more than `MAX_RESTARTS` restarts of one worker within
  `RESTART_PERIOD` seconds (OTP intensity, per worker);
- on SIGTERM/SIGINT forwards SIGTERM to every worker (each drains: `whispr.gateway.drain`), waits
  for all of them, and SIGKILLs what still runs `shutdown_grace + KILL_MARGIN` seconds later;
- exits 0 when every worker stopped cleanly after the signal, 1 otherwise.

In Kubernetes run one worker per pod (scale with replicas): the kubelet then supervises, and the
drain sees the pod's own SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import trio

from whispr.config import ConfigError, Settings

__all__ = ["KILL_MARGIN", "MAX_RESTARTS", "RESTART_PERIOD", "check_workers", "serve_workers", "worker_argv"]

_log = logging.getLogger("whispr.workers")

MAX_RESTARTS = 5
RESTART_PERIOD = 60.0
RESTART_DELAY = 0.5
KILL_MARGIN = 5.0


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse a worker count the settings cannot serve.

    Raises:
        ConfigError: workers < 1; or N > 1 without PostgreSQL and Redis, or on port 0.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        return
    if not settings.resolved_store_url.startswith(("postgresql://", "postgres://")) or not settings.redis_url:
        raise ConfigError(
            f"--workers {workers} needs a shared store and Redis (WHISPR_STORE_URL=postgresql://... and "
            "WHISPR_REDIS_URL=redis://...): with the embedded SQLite store and in-process pub/sub each worker "
            "would be a separate gateway, and a message sent through one would not reach sockets on another"
        )
    if settings.port == 0:
        raise ConfigError(f"--workers {workers} needs a fixed --port: the workers share it (SO_REUSEPORT)")


def worker_argv(argv: Sequence[str], node_id: str, index: int) -> list[str]:
    """The command line of worker `index`: `argv` (the parent's `serve` arguments) without
    `--workers`/`--node-id`, plus the worker's node id and `--reuse-port`."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--node-id"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--node-id=")):
            continue
        kept.append(arg)
    return [sys.executable, "-m", "whispr", *kept, "--node-id", f"{node_id}-w{index}", "--reuse-port"]


def serve_workers(settings: Settings, workers: int, argv: Sequence[str]) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT (see the module docstring). Blocking.

    `argv` is the parent's own argument list (starting with "serve"). Returns the exit code.
    """
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    check_workers(settings, workers)
    return trio.run(_Parent(settings, workers, argv).run)


class _Parent:
    def __init__(self, settings: Settings, workers: int, argv: Sequence[str]) -> None:
        self._settings = settings
        self._argv = [worker_argv(argv, settings.node_id, i) for i in range(workers)]
        self._procs: dict[int, trio.Process] = {}
        self._stop_requested = trio.Event()
        self._failed = False

    async def run(self) -> int:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_request, signals)
                async with trio.open_nursery() as workers:
                    for index in range(len(self._argv)):
                        workers.start_soon(self._supervise, index)
                nursery.cancel_scope.cancel()  # every worker is gone
        return 1 if self._failed else 0

    async def _stop_on_request(self, signals: AsyncIterator[int]) -> None:
        """On a signal (or a give-up), SIGTERM every worker; SIGKILL what runs after the grace."""

        async def on_signal() -> None:
            async for signum in signals:
                _log.warning("%s received: stopping %d workers", signal.Signals(signum).name, len(self._procs))
                self._stop_requested.set()
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_signal)
            await self._stop_requested.wait()
            nursery.cancel_scope.cancel()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        await trio.sleep(self._settings.shutdown_grace + KILL_MARGIN)
        for index, proc in self._procs.items():
            if proc.returncode is None:
                _log.error("worker %d (pid %d) did not stop within the grace: killing it", index, proc.pid)
                self._failed = True
                proc.kill()

    async def _supervise(self, index: int) -> None:
        """Run worker `index`, restarting it while the parent is not stopping."""
        restarts: list[float] = []
        while not self._stop_requested.is_set():
            proc = await trio.lowlevel.open_process(self._argv[index])
            self._procs[index] = proc
            _log.info("worker %d started pid=%d", index, proc.pid)
            if self._stop_requested.is_set():  # the stop's SIGTERMs went out before it existed
                proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            if self._stop_requested.is_set():
                _log.info("worker %d (pid %d) stopped with %d", index, proc.pid, code)
                # -SIGTERM: our signal reached it before its node installed its handler (still starting)
                if code not in (0, -signal.SIGTERM):
                    self._failed = True
                return
            now = trio.current_time()
            restarts = [t for t in restarts if now - t < RESTART_PERIOD] + [now]
            if len(restarts) > MAX_RESTARTS:
                _log.error("worker %d exited %d times within %gs: giving up", index, len(restarts), RESTART_PERIOD)
                self._failed = True
                self._stop_requested.set()  # the others are stopped; the parent exits 1
                return
            _log.error("worker %d (pid %d) exited with %d: restarting", index, proc.pid, code)
            with trio.move_on_after(RESTART_DELAY):
                await self._stop_requested.wait()
