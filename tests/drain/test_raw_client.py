"""`RawClient` records the server's close code whichever of its tasks sees the close first.

Regression (tests/faults E5, "a's devices closed with 1012 96.7 %", two closes recorded as None):
trio-websocket refuses `send_message` as soon as its reader has parsed the server's close frame,
while that reader still awaits the write of its echo, before it ends the message channel that
`RawClient.read_loop` waits on. A device's send in that window raised `Closed`, the device's
nursery cancelled `read_loop` before it ran, and the 1012 the server did send was lost.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream, wrap_server_stream

from tests.drain.serve import Closed, RawClient
from whispr.gateway.drain import CLOSE_DRAINING


async def test_a_send_that_sees_the_servers_close_first_records_its_code() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    pump = client_stream.send_stream.send_all_hook
    assert pump is not None
    echo_sent = trio.Event()
    holding = False

    async def hold_the_echo() -> None:  # the client's writes stall once armed: its close echo waits
        if holding:
            await echo_sent.wait()
        await pump()

    client_stream.send_stream.send_all_hook = hold_the_echo
    async with trio.open_nursery() as nursery:
        server: list[WebSocketConnection] = []

        async def accept() -> None:
            request = await wrap_server_stream(nursery, server_stream)
            server.append(await request.accept())

        nursery.start_soon(accept)
        # trio-websocket annotates a socket stream but runs over any trio Stream
        ws = await wrap_client_stream(nursery, client_stream, "localhost", "/socket/websocket")  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        client = RawClient("device", ws)
        # The tasks of one connection, as `tests.faults.load.Device._connection` runs them.
        with pytest.RaisesGroup(Closed):
            async with trio.open_nursery() as connection:
                connection.start_soon(client.read_loop)
                await trio.testing.wait_all_tasks_blocked()
                holding = True
                nursery.start_soon(server[0].aclose, CLOSE_DRAINING, "draining")
                await trio.testing.wait_all_tasks_blocked()  # the close frame is parsed, its echo held
                await client.push("conversation:1", "send_message", {"client_message_id": "1"})

        assert client.close_code == CLOSE_DRAINING
        echo_sent.set()
        nursery.cancel_scope.cancel()
