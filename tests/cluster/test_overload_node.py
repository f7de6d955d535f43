"""Redirect mode through a real node: at the connection cap a new socket gets 503 + Retry-After
(contract.md §1), the open ones carry on, and a freed slot admits the next one; the state change is
logged once each way and every refusal is counted in /metrics with its reason."""

from __future__ import annotations

import logging
import re
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path

import pytest
import trio

from tests.conformance.support import PhoenixRaw, RawSocket, Refused, open_raw, wait_until
from tests.drain.serve import http_get
from tests.node import RunningNode, running_node

pytestmark = pytest.mark.integration


def _open(node: RunningNode, device: str) -> AbstractAsyncContextManager[RawSocket]:
    return open_raw(node, f"token={node.token('alice', device)}&vsn=2.0.0")


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records if record.name == "whispr.gateway")


async def test_connection_cap_refuses_503_keeps_open_sockets_and_admits_once_a_slot_frees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="whispr.gateway")
    async with running_node(tmp_path, max_connections=2, overload_retry_after=3) as node:
        await node.add_user("alice")
        drainer = node.node.drainer
        assert drainer is not None
        async with AsyncExitStack() as stack:
            open_sockets = [PhoenixRaw(await stack.enter_async_context(_open(node, d))) for d in ("d1", "d2")]
            await wait_until(lambda: len(drainer) == 2, what="two open sockets on the node")

            for attempt in range(2):
                with pytest.raises(Refused) as refused:
                    async with _open(node, f"refused{attempt}"):
                        pass
                assert refused.value.status == 503
                assert refused.value.headers["Retry-After"] == "3"
                assert refused.value.body == b""
            with trio.fail_after(10):
                for phx in open_sockets:
                    assert (await phx.heartbeat())[4] == {"status": "ok", "response": {}}
                    assert (await phx.join("user:alice"))[1]["status"] == "ok"
            await wait_until(lambda: _logged(caplog, "node overloaded") == 1, what="the overload log line")

            await open_sockets.pop().ws.aclose()  # a slot frees
            await wait_until(lambda: len(drainer) == 1, what="the closed socket to be gone")
            await wait_until(lambda: _logged(caplog, "no longer overloaded") == 1, what="the recovery log line")
            assert _logged(caplog, "overloaded") == 2  # one line each way, none per refused connect
            async with _open(node, "d3") as ws:
                assert (await PhoenixRaw(ws).heartbeat())[4]["status"] == "ok"

        status, body = await trio.to_thread.run_sync(http_get, node.http_url + "/metrics")
        assert status == 200
        [line] = [
            line
            for line in body.decode().splitlines()
            if line.startswith("whispr_connections_refused_total{") and 'reason="overloaded_connections"' in line
        ]
        assert 'status="503"' in line
        assert re.search(r"} 2(\.0)?$", line), line
