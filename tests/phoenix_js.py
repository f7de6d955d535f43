"""Run the real phoenix.js client (tests/js/conformance.js) against a server and return what it saw.

    result = await run_scenario_async("ws://127.0.0.1:4000/socket", "join", {"topic": "room:1"}, timeout=15)
    assert result["summary"]["status"] == "ok"

`url` is the socket *base* (phoenix.js appends `/websocket`). The scenario names and their arguments are
documented at the top of each entry of `SCENARIOS` in tests/js/conformance.js; `script` takes a list of steps
(`connect`, `join`, `push`, `raw_push`, `leave`, `wait`, `sleep`, `mark`, `ping`, `disconnect`).

The result is the harness's JSON line: `ok` (every wait of the scenario was satisfied), `failed_step`,
`summary` (scenario-specific digest), `events` (the full timeline, each with `t` in ms and `kind`:
`ws_create`, `ws_upgrade`, `ws_open`, `ws_error`, `ws_close`, `send`/`recv` (raw frames, decoded),
`open`, `close`, `error`, `join_reply`, `push_reply`, `leave_reply`, `chan_msg`, `chan_error`, `chan_close`,
`presence_sync`, `presence_join`, `presence_leave`, `raw_sent`, `step`, `step_failed`), `duration_ms`.

With `check=True` (the default) a result with `ok: false` raises `ScenarioFailed`, whose `result` attribute
holds the whole result. Any harness problem (Node missing, `npm ci` not run, bad arguments, a crash, no
JSON, the timeout) raises `HarnessError` with Node's stderr.

The async version is the one to use under pytest-trio with the server running in the same Trio loop;
the sync version is for servers that run in another process or thread.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import trio

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "conformance.js"

__all__ = [
    "JS_DIR",
    "HarnessError",
    "ScenarioFailed",
    "events_of",
    "run_scenario",
    "run_scenario_async",
]


class HarnessError(RuntimeError):
    """The harness itself failed: not a statement about the server under test."""


class ScenarioFailed(AssertionError):
    """The scenario ran, but something it waits for did not happen in time."""

    def __init__(self, scenario: str, result: dict[str, Any]) -> None:
        self.result = result
        failed = result.get("failed_step")
        tail = [e for e in result.get("events", []) if e.get("kind") not in ("step",)][-12:]
        lines = "\n  ".join(json.dumps(e, sort_keys=True) for e in tail)
        super().__init__(f"phoenix.js scenario {scenario!r} failed at {failed}; last events:\n  {lines}")


def _command(scenario: str, args: dict[str, Any], url: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise HarnessError("node is not on PATH (bash .ci/setup --dev installs it)")
    if not (JS_DIR / "node_modules" / "phoenix").is_dir() or not (JS_DIR / "node_modules" / "ws").is_dir():
        raise HarnessError(f"phoenix.js harness not installed: run `npm ci` in {JS_DIR} (or bash .ci/setup --dev)")
    payload = dict(args)
    payload["url"] = url
    return [node, str(SCRIPT), scenario, json.dumps(payload)]


def _parse(scenario: str, returncode: int, stdout: bytes, stderr: bytes, check: bool) -> dict[str, Any]:
    err = stderr.decode("utf-8", "replace").strip()
    lines = [line for line in stdout.decode("utf-8", "replace").splitlines() if line.startswith("{")]
    if returncode not in (0, 3) or not lines:
        raise HarnessError(f"phoenix.js scenario {scenario!r} exited with {returncode}; stderr:\n{err or '(empty)'}")
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise HarnessError(f"phoenix.js scenario {scenario!r} printed invalid JSON ({exc}); stderr:\n{err}") from exc
    if err:
        result["stderr"] = err
    if check and not result.get("ok"):
        raise ScenarioFailed(scenario, result)
    return result


async def run_scenario_async(
    url: str,
    scenario: str,
    args: dict[str, Any] | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - the brief's signature; it bounds the Node child process
    *,
    check: bool = True,
) -> dict[str, Any]:
    """Run one scenario with `trio.run_process`; the Trio loop keeps serving while Node runs."""
    cmd = _command(scenario, args or {}, url)
    env = dict(os.environ)
    env.setdefault("NODE_NO_WARNINGS", "1")
    try:
        with trio.fail_after(timeout):
            proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False, env=env)
    except trio.TooSlowError:
        raise HarnessError(f"phoenix.js scenario {scenario!r} did not finish within {timeout} s") from None
    return _parse(scenario, proc.returncode, proc.stdout, proc.stderr, check)


def run_scenario(
    url: str, scenario: str, args: dict[str, Any] | None = None, timeout: float = 30.0, *, check: bool = True
) -> dict[str, Any]:
    """Blocking version, for a server that runs in another process or thread."""
    cmd = _command(scenario, args or {}, url)
    env = dict(os.environ)
    env.setdefault("NODE_NO_WARNINGS", "1")
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"phoenix.js scenario {scenario!r} did not finish within {timeout} s") from exc
    return _parse(scenario, proc.returncode, proc.stdout, proc.stderr, check)


def events_of(result: dict[str, Any], kind: str, **fields: Any) -> list[dict[str, Any]]:
    """The events of `result` of one kind whose fields equal `fields`, in order."""
    return [
        e for e in result.get("events", []) if e.get("kind") == kind and all(e.get(k) == v for k, v in fields.items())
    ]
