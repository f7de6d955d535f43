"""Drive tests/e2e/js/device.js (one phoenix.js device on its `user:` topic) from a Trio test.

    async with js_device(url, token, "user:alice", mode="fn") as device:
        await device.wait(lambda ev: ev["ev"] == "join", what="the join")
        await device.command({"op": "disconnect"})

Every line the device prints is kept in `events`, in order; `wait` is bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

from tests.phoenix_js import JS_DIR, HarnessError

SCRIPT = Path(__file__).resolve().parent / "js" / "device.js"
WAIT = 30.0


class JsDevice:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._changed = trio.Event()

    async def _read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self.events.append(json.loads(line))
            if lines:
                self._changed.set()
                self._changed = trio.Event()
        self.events.append({"ev": "exited"})
        self._changed.set()

    async def command(self, cmd: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(cmd).encode() + b"\n")

    def of(self, kind: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[since:] if e["ev"] == kind]

    async def wait(
        self, predicate: Callable[[list[dict[str, Any]]], Any], *, within: float = WAIT, what: str = ""
    ) -> Any:
        """Until `predicate(events)` is truthy (returned); raises AssertionError after `within` seconds."""
        with trio.move_on_after(within):
            while not (result := predicate(self.events)):
                if self.events and self.events[-1]["ev"] == "exited":
                    raise AssertionError(f"device.js exited while waiting for {what}")
                await self._changed.wait()
            return result
        raise AssertionError(f"timed out after {within}s waiting for {what}; last events {self.events[-5:]}")


@asynccontextmanager
async def js_device(url: str, token: str, topic: str, *, mode: str) -> AsyncIterator[JsDevice]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "phoenix").is_dir():
        raise HarnessError("node and tests/js/node_modules are needed (bash .ci/setup --dev)")
    args = json.dumps({"url": url, "token": token, "topic": topic, "mode": mode})
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            [node, str(SCRIPT), args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        device = JsDevice(process)
        nursery.start_soon(device._read)
        try:
            yield device
        finally:
            with trio.move_on_after(5, shield=True), suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await device.command({"op": "exit"})
                await process.wait()
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            nursery.cancel_scope.cancel()
