"""`python -m loadtest <scenario> [options]` and `python -m loadtest --compare A.jsonl B.jsonl`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from loadtest.config import SCENARIOS, Config
from loadtest.report import compare, plot, print_table, write_jsonl
from loadtest.runner import LoadtestError, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Load scenarios for a Phoenix-protocol WebSocket gateway (loopback only).",
        epilog="Compare two runs: python -m loadtest --compare A.jsonl B.jsonl",
    )
    p.add_argument("scenario", nargs="?", choices=SCENARIOS)
    p.add_argument("--compare", nargs=2, metavar=("A.jsonl", "B.jsonl"), help="print B/A ratios of two results")
    p.add_argument("--url", default="ws://127.0.0.1:4000/socket", help="socket base URL (phoenix.js style)")
    p.add_argument("-n", "--connections", type=int, default=100, help="connections / subscribers")
    p.add_argument("--procs", type=int, default=1, help="worker processes (each ≤ 15,000 sockets)")
    p.add_argument("--source-ips", type=int, default=8, help="spread over 127.0.0.1..N (0: no bind)")
    p.add_argument("--token", help="query parameter token=…")
    p.add_argument("--auth-token", help="send the token as phoenix.js authToken (subprotocol)")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="extra query parameter")
    p.add_argument("--topic", default="room:lobby", help="topic to join; {i} = connection index")
    p.add_argument("--join-params", default="{}", help="JSON join payload")
    p.add_argument("--event", default="ping", help="rtt: event to push; fanout: event the publisher pushes")
    p.add_argument("--payload", default='{"body": "{marker}"}', help="fanout: JSON payload template with {marker}")
    p.add_argument("--rate", type=float, default=500.0, help="connects per second")
    p.add_argument("--msg-rate", type=float, default=10.0, help="fanout: messages per second")
    p.add_argument("--count", type=int, default=0, help="fanout: messages; rtt: total requests (0: use --duration)")
    p.add_argument("--duration", type=float, default=10.0, help="measured phase in seconds (a hard bound)")
    p.add_argument("--ramp-timeout", type=float, help="max seconds for the connect phase")
    p.add_argument("--drain", type=float, default=5.0, help="fanout: seconds to wait for deliveries after sending")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--request-timeout", type=float, default=10.0)
    p.add_argument("--heartbeat", type=float, default=30.0, help="Phoenix heartbeat interval (s)")
    p.add_argument("--server-pid", type=int, help="read the server's RSS and CPU from /proc/PID")
    p.add_argument("--trigger-url", help="fanout: POST this URL per message instead of pushing")
    p.add_argument("--trigger-body", default='{"body": "{marker}"}', help="fanout: POST body template")
    p.add_argument("--trigger-header", action="append", default=[], metavar="'Name: value'")
    p.add_argument("--progress-interval", type=float, default=1.0)
    p.add_argument("--out", help="write results as JSON lines")
    p.add_argument("--plot", help="write latency percentiles over time to a PNG (needs matplotlib)")
    return p


def config_from_args(ns: argparse.Namespace) -> Config:
    params: dict[str, str] = {}
    for kv in ns.param:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--param needs K=V, got {kv!r}")
        params[k] = v
    join_params: Any = json.loads(ns.join_params)
    cfg = Config(
        scenario=ns.scenario,
        url=ns.url,
        connections=ns.connections,
        procs=ns.procs,
        source_ips=ns.source_ips,
        token=ns.token,
        auth_token=ns.auth_token,
        params=params,
        topic=ns.topic,
        join_params=join_params,
        event=ns.event,
        payload=ns.payload,
        rate=ns.rate,
        msg_rate=ns.msg_rate,
        count=ns.count,
        duration=ns.duration,
        ramp_timeout=ns.ramp_timeout,
        drain=ns.drain,
        connect_timeout=ns.connect_timeout,
        request_timeout=ns.request_timeout,
        heartbeat=ns.heartbeat,
        server_pid=ns.server_pid,
        trigger_url=ns.trigger_url,
        trigger_body=ns.trigger_body,
        trigger_headers=ns.trigger_header,
        progress_interval=ns.progress_interval,
        out=ns.out,
        plot=ns.plot,
    )
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.compare:
        compare(*ns.compare)
        return 0
    if ns.scenario is None:
        parser.error("a scenario is required (or --compare A B)")
    try:
        cfg = config_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        summary = trio.run(run, cfg)
    except LoadtestError as exc:
        sys.stderr.write(f"loadtest: {exc}\n")
        return 1
    if cfg.out:
        write_jsonl(cfg.out, cfg, summary)
    print_table(summary)
    if cfg.plot:
        plot(summary.get("windows", []), cfg.plot, f"{cfg.scenario}: latency per second")
    return 0
