"""Two (or more) `whispr serve` processes sharing one private Redis and one fresh PostgreSQL database.

The fault tests inject faults into whole processes: a node is SIGKILLed, SIGTERMed and restarted,
Redis is SIGKILLed, restarted, SIGSTOPped. Each node incarnation is a `ServeProcess` with its own
data dir (`<name>-<n>`, so a restart keeps the killed incarnation's log) and the node id `<name>`
(a restarted node is the same node, as in a deploy). All incarnations read the same dev JWT secret and
API key, written into their data dirs before they start, so a token minted once is valid on every node.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.drain.serve import ServeProcess, http_get, must
from tests.services import PostgresServer, RedisServer

# Every load client connects from 127.0.0.1, and a send rate far above a person's is the point
# (contract.md §5 limits would refuse the load, not the fault).
LOAD_LIMITS = {
    "WHISPR_CONNECTIONS_PER_IP": "100000",
    "WHISPR_CONNECTS_PER_5MIN": "100000",
    "WHISPR_MESSAGES_PER_MINUTE": "1000000",
    "WHISPR_JOINS_PER_MINUTE": "10000",
}


async def fresh_database(postgres: PostgresServer) -> str:
    """A new, migrated database on the session's PostgreSQL; its `postgresql://` URL.

    Blocking work runs in child processes (`createdb`, `whispr migrate`); raises CalledProcessError.
    """
    name = f"faults_{uuid.uuid4().hex[:12]}"
    createdb = [str(postgres.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres", name]
    await trio.run_process(createdb, capture_stdout=True, capture_stderr=True)
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}"
    await trio.run_process([sys.executable, "-m", "whispr", "migrate", "--store", url], capture_stdout=True)
    return url


class Cluster:
    """Nodes by name over one Redis and one store; `close()` kills whatever still runs."""

    def __init__(self, root: Path, redis: RedisServer, store_url: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.redis = redis
        self.store_url = store_url
        self.env = {**LOAD_LIMITS, **(env or {})}
        self.nodes: dict[str, ServeProcess] = {}
        self.retired: list[ServeProcess] = []
        self._incarnations: dict[str, int] = {}
        self._jwt_secret = secrets.token_urlsafe(36)
        self._api_key = secrets.token_urlsafe(36)

    def start(self, name: str) -> ServeProcess:
        """Start a new incarnation of node `name` on a free port (not waiting for it: see `wait_ready`)."""
        if (old := self.nodes.get(name)) is not None:
            self.retired.append(old)
        count = self._incarnations[name] = self._incarnations.get(name, 0) + 1
        data_dir = self.root / f"{name}-{count}"
        data_dir.mkdir(parents=True)
        (data_dir / "dev-jwt-secret").write_text(self._jwt_secret + "\n")
        (data_dir / "dev-api-key").write_text(self._api_key + "\n")
        args = ("--store", self.store_url, "--redis", self.redis.url, "--node-id", name)
        node = self.nodes[name] = ServeProcess(data_dir, self.env, args)
        return node

    async def wait_ready(self, *names: str) -> None:
        """Until every named node answers /ready 200; raises with the node's log if it died or took 60 s."""
        for name in names:
            await trio.to_thread.run_sync(self.nodes[name].wait_ready, 60.0)

    def token(self, user_id: str, device_id: str) -> str:
        return next(iter(self.nodes.values())).token(user_id, device_id)

    def socket_url(self, name: str, user_id: str, device_id: str) -> str:
        return self.nodes[name].socket_url(self.token(user_id, device_id))

    async def setup_conversations(self, groups: list[list[str]]) -> list[str]:
        """Activate every user of `groups` and create one conversation per group; the conversation ids."""
        api = next(iter(self.nodes.values())).api()
        for user in sorted({user for group in groups for user in group}):
            must(await trio.to_thread.run_sync(api.set_active, user, True))
        return [must(await trio.to_thread.run_sync(api.create_conversation, group))["id"] for group in groups]

    def kill(self, name: str) -> None:
        """SIGKILL node `name` (a crash: no drain, no membership `leave`) and reap it."""
        node = self.nodes[name]
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()

    async def stop(self, name: str) -> int:
        """SIGTERM node `name` (drain, then stop) and wait for its exit code (cancellable: bound it)."""
        node = self.nodes[name]
        node.terminate()
        return await trio.to_thread.run_sync(node.proc.wait, abandon_on_cancel=True)

    async def metric(self, name: str, sample: str, **labels: str) -> float | None:
        """The value of `sample{labels}` in node `name`'s /metrics; None if absent or the node is down."""
        status, body = await trio.to_thread.run_sync(http_get, self.nodes[name].http_url + "/metrics")
        if status != 200:
            return None
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    def logs(self) -> str:
        """Every incarnation's log, each under a header (for assertion messages)."""
        parts = []
        for node in [*self.retired, *self.nodes.values()]:
            parts.append(f"===== {node.data_dir.name} (exit {node.proc.returncode}) =====\n{node.log()[-6000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for node in [*self.retired, *self.nodes.values()]:
            node.close()


def redis_cli(redis: RedisServer, *args: str) -> str:
    """One `redis-cli` command against the private Redis; its stdout (blocking; raises CalledProcessError)."""
    argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(redis.port), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10, env=dict(os.environ)).stdout
