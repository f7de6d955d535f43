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
    p.add_argument(
        "--node-port",
        type=int,
        action="append",
        default=[],
        help="another node on --url's host (repeatable): connection i goes to port i mod k of [--url's, these]",
    )
    p.add_argument("-n", "--connections", type=int, default=100, help="connections / subscribers")
    p.add_argument("--procs", type=int, default=1, help="worker processes (each ≤ 15,000 sockets)")
    p.add_argument("--source-ips", type=int, default=8, help="spread over N loopback addresses (0: no bind)")
    p.add_argument("--source-base", type=int, default=0, help="first source address = 127.0.0.1 + this offset")
    p.add_argument("--token", help="query parameter token=… (one token shared by every connection)")
    p.add_argument("--token-secret", help="HS256 secret: mint a token per connection (sub, device_id, exp)")
    p.add_argument("--secret-file", help="read the HS256 secret from this file (e.g. DATA_DIR/dev-jwt-secret)")
    p.add_argument("--user", default="lt-u{i}", help="minted tokens' sub ({i} = connection index)")
    p.add_argument("--device", default="lt-d{i}", help="minted tokens' device_id ({i} = connection index)")
    p.add_argument("--token-ttl", type=float, default=3600.0, help="minted tokens' lifetime (s)")
    p.add_argument("--publish-topic", help="fanout: the publisher's topic ({conv}); default: --topic of connection 0")
    p.add_argument("--publisher-user", default="lt-pub", help="fanout: the publisher's user (minted tokens)")
    p.add_argument("--groups-file", help="conversations from `python -m loadtest.seed` ({conv}, chat, reconnect)")
    p.add_argument("--group-size", type=int, default=10, help="members per conversation without --groups-file")
    p.add_argument("--request-payload", default='{"n": {n}}', help="rtt: JSON template with {n} / {marker}")
    p.add_argument("--reconnect-rate", type=float, help="reconnect: the storm's connects per second (default --rate)")
    p.add_argument("--drop-fraction", type=float, default=0.5, help="reconnect: share of members that drop")
    p.add_argument("--auth-token", help="send the token as phoenix.js authToken (subprotocol)")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="extra query parameter")
    p.add_argument("--topic", default="room:lobby", help="topic to join; {i} index, {user} its user, {conv} its conv")
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
    secret = ns.token_secret
    if ns.secret_file:
        with open(ns.secret_file, encoding="utf-8") as f:
            secret = f.read().strip()
    cfg = Config(
        scenario=ns.scenario,
        url=ns.url,
        node_ports=ns.node_port,
        connections=ns.connections,
        procs=ns.procs,
        source_ips=ns.source_ips,
        token=ns.token,
        auth_token=ns.auth_token,
        source_base=ns.source_base,
        token_secret=secret,
        user=ns.user,
        device=ns.device,
        token_ttl=ns.token_ttl,
        publisher_user=ns.publisher_user,
        publish_topic=ns.publish_topic,
        groups_file=ns.groups_file,
        group_size=ns.group_size,
        request_payload=ns.request_payload,
        drop_fraction=ns.drop_fraction,
        reconnect_rate=ns.reconnect_rate,
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
    cfg.load_groups()
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
