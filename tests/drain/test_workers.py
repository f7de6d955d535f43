"""`whispr serve --workers N`: N nodes on one port (SO_REUSEPORT), supervised by the parent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.drain.serve import RawClient, ServeProcess, http_get, must, open_raw_client
from tests.services import PostgresServer, RedisServer
from whispr.cli import main
from whispr.workers import worker_argv

pytestmark = pytest.mark.integration

LIMITS = {"WHISPR_CONNECTIONS_PER_IP": "1000", "WHISPR_CONNECTS_PER_5MIN": "10000"}
CLIENTS = 16


def test_more_than_one_worker_needs_postgresql_and_redis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--dev", "--workers", "2", "--data-dir", "/nonexistent-whispr"]) == 2
    err = capsys.readouterr().err
    assert "--workers 2 needs a shared store and Redis" in err
    assert main(["serve", "--dev", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_worker_command_line_replaces_workers_and_node_id() -> None:
    argv = worker_argv(["serve", "--dev", "--workers", "3", "--node-id=a", "--port", "4000"], "gw", 2)
    assert argv[1:] == ["-m", "whispr", "serve", "--dev", "--port", "4000", "--node-id", "gw-w2", "--reuse-port"]


def _workers_of(log: str) -> dict[int, int]:
    """worker index -> pid of its latest start, from the parent's log."""
    return {int(m[1]): int(m[2]) for m in re.finditer(r"worker (\d+) started pid=(\d+)", log)}


async def _connected_nodes(serve: ServeProcess, count: int) -> set[str]:
    """The node ids whose log says a socket connected, once `count` sockets are connected."""
    pattern = re.compile(r"socket connected .* node=(\S+)")
    while len(found := pattern.findall(serve.log())) < count:  # noqa: ASYNC110 - another process's log
        await trio.sleep(0.05)
    return set(found)


async def test_two_workers_share_the_port_restart_on_crash_and_drain_on_sigterm(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    store = f"postgresql://postgres@127.0.0.1:{postgres.port}/whispr"
    migrate = [sys.executable, "-m", "whispr", "migrate", "--store", store]
    await trio.run_process(migrate, capture_stdout=True)
    env = {"WHISPR_SHUTDOWN_GRACE": "10", "WHISPR_DRAIN_WINDOW": "1", **LIMITS}
    args = ("--workers", "2", "--store", store, "--redis", fresh_redis.url, "--node-id", "gw")
    serve = ServeProcess(tmp_path / "gw", env, args)
    try:
        await trio.to_thread.run_sync(serve.wait_ready)
        api = serve.api()
        for i in range(CLIENTS):
            must(await trio.to_thread.run_sync(api.set_active, f"w{i}", True))
        with trio.fail_after(20):  # both workers serving, so the one killed below was listening
            while not all(f"node gw-w{n} listening" in serve.log() for n in (0, 1)):  # noqa: ASYNC110 - another process's log
                await trio.sleep(0.05)
        first = _workers_of(serve.log())

        # a crashed worker is restarted, and the port keeps answering meanwhile
        os.kill(first[1], signal.SIGKILL)
        with trio.fail_after(20):
            while serve.log().count("node gw-w1 listening") < 2:  # noqa: ASYNC110 - another process's log
                await trio.sleep(0.05)
        assert _workers_of(serve.log())[1] != first[1]
        assert (await trio.to_thread.run_sync(http_get, serve.http_url + "/health"))[0] == 200
        assert f"worker 1 (pid {first[1]}) exited with -9: restarting" in serve.log()

        clients: list[RawClient] = []
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                await trio.to_thread.run_sync(serve.wait_ready)
                for i in range(CLIENTS):
                    client = await open_raw_client(nursery, serve.socket_url(serve.token(f"w{i}", "d")), f"w{i}")
                    await client.join(f"user:w{i}")
                    clients.append(client)
                nodes = await _connected_nodes(serve, CLIENTS)
            serve.terminate()
            with trio.fail_after(15):
                for client in clients:
                    await client.closed.wait()
        code = await trio.to_thread.run_sync(lambda: serve.proc.wait(timeout=15))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the parent did not exit:\n{serve.log()}")
    finally:
        serve.close()
    log = serve.log()
    assert nodes == {"gw-w0", "gw-w1"}, log  # the kernel spread the sockets over both workers
    assert code == 0, log
    assert {c.close_code for c in clients} == {1012}
    assert all(c.events("reconnect_required") for c in clients)
    assert "SIGTERM received: stopping 2 workers" in log
    assert re.search(r"drain done: \d+ sockets .* node=gw-w0", log), log
    assert re.search(r"drain done: \d+ sockets .* node=gw-w1", log), log
    assert "worker 0 (pid" in log
    assert "stopped with 0" in log
