"""A private nginx running deploy/nginx/whispr.conf in front of given upstreams, on a free loopback port.

The deploy file is used as written; only its upstream `server` lines and its `listen` line are
replaced. Everything nginx writes (pid, logs, temp files) stays in a temporary prefix directory.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONF = ROOT / "deploy" / "nginx" / "whispr.conf"

MAIN = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/whispr.conf;
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def site_config(upstreams: Sequence[int], port: int) -> str:
    """deploy/nginx/whispr.conf with its upstream servers and listen address replaced."""
    text = DEPLOY_CONF.read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;\n" for p in upstreams)
    text, count = re.subn(r"(    server 127\.0\.0\.1:\d+ [^\n]*\n)+", servers, text, count=1)
    assert count == 1, "the upstream's server lines moved: update tests/deploy_nginx/nginx.py"
    text, count = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    assert count == 1, "the listen line moved: update tests/deploy_nginx/nginx.py"
    return text


@contextlib.contextmanager
def running_nginx(prefix: Path, upstreams: Sequence[int]) -> Iterator[int]:
    """Run nginx with the deploy config in front of `upstreams` (ports); yield its port."""
    exe = nginx_binary()
    if exe is None:
        raise RuntimeError("nginx is not installed: run `bash .ci/setup --dev`")
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (prefix / "whispr.conf").write_text(site_config(upstreams, port))
    main = prefix / "nginx.conf"
    main.write_text(MAIN.format(prefix=prefix))
    check = subprocess.run([exe, "-t", "-p", str(prefix), "-c", str(main)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([exe, "-p", str(prefix), "-c", str(main)], stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
