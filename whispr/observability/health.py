"""Liveness and readiness, as the HTTP front door answers them (contract.md §7).

- `GET /health`: the process is alive and its event loop answers. Always 200 `{"status":"ok"}`;
  it checks nothing else, so a slow dependency never gets a healthy pod killed.
- `GET /ready`: the node accepts sockets. 200 when every named check passes and the node is not
  draining; otherwise 503. Either way the JSON body names each check and its state:

      {"status": "unready", "draining": false,
       "checks": {"store": {"ok": false, "detail": "timed out after 1s"},
                  "pubsub_canary": {"ok": true, "detail": ""}}}

A check is an async callable with no arguments returning a `CheckResult` (or a bare bool). Checks
run concurrently, each under `timeout` seconds, so a hung dependency makes `/ready` fail within
`timeout` instead of hanging the probe. A check that raises fails with the exception's type name
as detail (never its message: `/ready` may be reachable from outside). Cancellation of the caller
propagates as usual.

The app registers its checks (supervision tree up, store reachable, pub/sub canary fresh) and
calls `Readiness.drain()` when a deploy or scale-in starts; `/ready` then fails at once, so the
load balancer stops sending new sockets while existing ones are moved with close 1012.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

__all__ = [
    "HEALTH_BODY",
    "Check",
    "CheckResult",
    "CheckState",
    "Readiness",
    "ReadinessReport",
    "health",
]

HEALTH_BODY = b'{"status":"ok"}'


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What a check returns: pass/fail and a short, bounded, secret-free explanation."""

    ok: bool
    detail: str = ""


Check = Callable[[], Awaitable[CheckResult | bool]]


@dataclass(frozen=True, slots=True)
class CheckState:
    """One check's outcome in a readiness evaluation."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    """One evaluation of every check, plus the draining flag."""

    checks: tuple[CheckState, ...]
    draining: bool

    @property
    def ready(self) -> bool:
        """True when every check passed and the node is not draining."""
        return not self.draining and all(check.ok for check in self.checks)

    @property
    def status_code(self) -> int:
        """200 when ready, else 503."""
        return 200 if self.ready else 503

    def body(self) -> bytes:
        """The JSON body of `/ready`."""
        document = {
            "status": "ready" if self.ready else "unready",
            "draining": self.draining,
            "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in self.checks},
        }
        return json.dumps(document, separators=(",", ":")).encode()


def health() -> tuple[int, bytes]:
    """The `/health` answer: always `(200, b'{"status":"ok"}')`."""
    return 200, HEALTH_BODY


class Readiness:
    """The `/ready` model: named checks, a per-check timeout and the draining flag.

    Args:
        checks: name -> check, reported in this order.
        timeout: seconds each check may take before it counts as failed.
        on_report: called with every report (e.g. `Metrics.observe_readiness`); must not block.

    Raises:
        ValueError: `timeout` is not a positive finite number.
    """

    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        timeout: float = 1.0,
        on_report: Callable[[ReadinessReport], None] | None = None,
    ) -> None:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"readiness timeout must be a positive number of seconds, got {timeout!r}")
        self._checks = dict(checks)
        self._timeout = timeout
        self._on_report = on_report
        self._draining = False

    @property
    def draining(self) -> bool:
        """True once `drain()` was called."""
        return self._draining

    def drain(self) -> None:
        """Mark the node as draining: every later report is unready. There is no way back."""
        self._draining = True

    async def evaluate(self) -> ReadinessReport:
        """Run every check concurrently, each bounded by the timeout, and report.

        Returns within about `timeout` seconds whatever the checks do.
        """
        results: dict[str, CheckState] = {}
        async with trio.open_nursery() as nursery:
            for name, check in self._checks.items():
                nursery.start_soon(self._run, name, check, results)
        report = ReadinessReport(
            checks=tuple(results[name] for name in self._checks),
            draining=self._draining,
        )
        if self._on_report is not None:
            self._on_report(report)
        return report

    async def ready(self) -> tuple[int, bytes]:
        """The `/ready` answer: `(200 or 503, JSON body)`."""
        report = await self.evaluate()
        return report.status_code, report.body()

    async def _run(self, name: str, check: Check, results: dict[str, CheckState]) -> None:
        state = CheckState(name, False, f"timed out after {self._timeout:g}s")
        with trio.move_on_after(self._timeout):
            try:
                outcome = await check()
            except Exception as exc:  # a failing dependency is a failed check, not a failed probe
                state = CheckState(name, False, f"raised {type(exc).__name__}")
            else:
                if isinstance(outcome, CheckResult):
                    state = CheckState(name, outcome.ok, outcome.detail)
                else:
                    state = CheckState(name, bool(outcome), "")
        results[name] = state
