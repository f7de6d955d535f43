"""Private Redis and PostgreSQL instances for integration tests.

Each instance runs on a free loopback port below the ephemeral range (32768+), in its own temporary
directory, and is torn down by its context manager. Nothing here touches the machine's own services,
so the suite runs the same where Redis and PostgreSQL are not running (only installed).

Fault injection (`kill`, `pause`, `resume`, `stop`, `start`) is part of the API: reliability tests
use it to count what a dependency fault loses. `RedisClusterServers` is a 3-master Redis Cluster
made of cluster-mode `RedisServer`s (each also needs a free cluster bus port).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port that is free now, chosen below the ephemeral range (dependencies.md §1.7)."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found in 20000-32000")


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)  # polling an external process's port: not Trio code, no clock to wait on
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A private `redis-server` on a free port. `url` is what whispr's Redis adapter takes.

    With `cluster_port`, the server runs in cluster mode (its cluster bus on that port, its
    `nodes.conf` in its directory, so a restart rejoins the cluster as the same node).
    """

    def __init__(self, appendonly: bool = False, cluster_port: int | None = None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="whispr-redis-"))
        self.appendonly = appendonly
        self.cluster_port = cluster_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: run `bash .ci/setup --dev`")
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir)]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--enable-debug-command", "local"]
        if self.cluster_port is not None:
            # A 2 s node timeout: a killed master is marked failed (and the cluster down) quickly.
            args += ["--cluster-enabled", "yes", "--cluster-port", str(self.cluster_port)]
            args += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def kill(self) -> None:
        """SIGKILL the server (a crash). `start()` brings a new one up on the same port."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its sockets open."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """A private Redis Cluster: `masters` cluster-mode `RedisServer`s, no replicas, every slot assigned.

    `url` is a `redis+cluster://` URL listing every master (whispr's seed list). Faults go through
    `masters[i]` (`kill`/`start`, `pause`/`resume`); `wait_ok` waits for the cluster to serve again.
    """

    def __init__(self, masters: int = 3) -> None:
        self.masters: list[RedisServer] = []
        taken: set[int] = set()
        while len(self.masters) < masters:
            server = RedisServer(cluster_port=free_port())
            if {server.port, server.cluster_port} & taken or server.port == server.cluster_port:
                shutil.rmtree(server.dir, ignore_errors=True)  # free_port cannot see ports not bound yet
                continue
            taken |= {server.port, server.cluster_port}
            self.masters.append(server)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{m.port}" for m in self.masters)

    def _cli(self, port: int, *args: str) -> str:
        exe = shutil.which("redis-cli")
        if exe is None:
            raise RuntimeError("redis-cli is not installed: run `bash .ci/setup --dev`")
        done = subprocess.run([exe, "-p", str(port), *args], check=True, capture_output=True, text=True, timeout=30)
        return done.stdout

    def start(self) -> None:
        for server in self.masters:
            server.start()
        nodes = [f"127.0.0.1:{m.port}" for m in self.masters]
        self._cli(self.masters[0].port, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes")
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Block until every master reports `cluster_state:ok` and knows every other one, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.SubprocessError):
                infos = [self._cli(m.port, "CLUSTER", "INFO") for m in self.masters]
                if all("cluster_state:ok" in i and f"cluster_known_nodes:{len(self.masters)}" in i for i in infos):
                    return
            time.sleep(0.1)  # polling external processes: not Trio code, no clock to wait on
        raise TimeoutError(f"the Redis Cluster is not ok after {timeout}s")

    def close(self) -> None:
        for server in self.masters:
            server.close()


def _pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    exe = shutil.which("initdb")
    if exe is None:
        raise RuntimeError("PostgreSQL is not installed: run `bash .ci/setup --dev`")
    return Path(os.path.realpath(exe)).parent


class PostgresServer:
    """A private PostgreSQL cluster (initdb, trust auth, fsync off) on a free port.

    As root, the server runs as the `postgres` user (initdb refuses root). `dsn` is a libpq
    connection string for database `whispr`.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="whispr-pg-"))
        self.data = self.dir / "data"
        self.bindir = _pg_bindir()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=whispr"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def initdb(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")

    def start(self) -> None:
        if not self.data.exists():
            self.initdb()
            self._start()
            self._run(
                str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "whispr"
            )
        else:
            self._start()

    def _start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        log = str(self.dir / "postgres.log")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode `immediate` is a crash as far as clients can tell."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(appendonly: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(appendonly=appendonly)
    try:
        server.start()
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(masters)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
