"""The `whispr` command: `serve`, `migrate`, `token`, and the service-API commands.

The service-API commands (`conversation`, `message`, `notify`, `user`, `disconnect`,
`connections`) call a running node's `/api/v1` (`--url`, default the configured port on
localhost) with `WHISPR_API_KEY` (or the dev key with `--dev`), and print its JSON answer.

Settings come from `WHISPR_*` environment variables (see `whispr.config`); flags override them.
Exit codes: 0 success, 2 bad usage or configuration (the message says which setting), 1 failure
(for the service-API commands: the node answered an error, printed on stderr, or was unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from whispr.api.client import ApiClient, ApiResult
from whispr.config import ConfigError, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whispr", description="Whispr real-time gateway (Phoenix Channels on Trio)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a gateway node")
    serve.add_argument("--host", help="address to bind (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="TCP port (default 4000)")
    serve.add_argument("--dev", action="store_true", help="dev mode: text logs, localhost origins, generated secrets")
    serve.add_argument("--data-dir", type=Path, help="where the SQLite store and dev secrets live (default ./var)")
    serve.add_argument("--store", dest="store_url", help="sqlite:///PATH or postgresql://... (default SQLite)")
    serve.add_argument(
        "--redis",
        dest="redis_url",
        help="redis://host:port or redis+cluster://seed:port,... for a cluster (default: in-process)",
    )
    serve.add_argument("--node-id", help="this node's name in logs, metrics and the cluster")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="node processes sharing the port (SO_REUSEPORT), each with node id <node-id>-w<i>; "
        "N > 1 needs PostgreSQL and Redis (default 1)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for each worker

    migrate = commands.add_parser("migrate", help="create or upgrade the store's schema")
    migrate.add_argument("--dev", action="store_true", help="use the dev data dir defaults")
    migrate.add_argument("--data-dir", type=Path)
    migrate.add_argument("--store", dest="store_url")

    token = commands.add_parser("token", help="mint a development token with the configured HS256 secret")
    token.add_argument("user", help="user id (the token's sub)")
    token.add_argument("device", help="device id")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")
    token.add_argument("--device-type", help="optional device_type claim")
    token.add_argument("--dev", action="store_true", help="use the dev secret under the data dir")
    token.add_argument("--data-dir", type=Path)
    _service_commands(commands)
    return parser


def _service_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help)
        parser.add_argument("--url", help="a node's base URL (default http://127.0.0.1:PORT)")
        parser.add_argument("--dev", action="store_true", help="use the dev API key under the data dir")
        parser.add_argument("--data-dir", type=Path)
        return parser

    conversation = command("conversation", "create a conversation or change its members")
    conversation.add_argument("action", choices=["create", "add-member", "remove-member"])
    conversation.add_argument("ids", nargs="+", help="create: USER...; add/remove-member: CONVERSATION USER")

    message = command("message", "post a message to a conversation as a user or as the system")
    message.add_argument("conversation")
    message.add_argument("content")
    message.add_argument("--sender", help="the sending user (default: the system)")
    message.add_argument("--client-message-id", help="idempotency key (default: a random one)")

    notify = command("notify", "send a notification to a user")
    notify.add_argument("user")
    notify.add_argument("--type", required=True)
    notify.add_argument("--title", default="")
    notify.add_argument("--body", default="")

    user = command("user", "activate or deactivate a user (deactivating disconnects their sockets)")
    user.add_argument("action", choices=["activate", "deactivate"])
    user.add_argument("user")

    disconnect = command("disconnect", "disconnect a user's sockets (close 1001), or one device's")
    disconnect.add_argument("user")
    disconnect.add_argument("--device")

    command("connections", "list the node's connected sockets")


def _service_call(args: argparse.Namespace, settings: Settings) -> int:
    """Run one service-API command; print the answer; 0 on success, 1 on an error answer."""
    if not settings.api_key:
        raise ConfigError("no API key: set WHISPR_API_KEY, or use --dev")
    client = ApiClient(args.url or f"http://127.0.0.1:{settings.port}", settings.api_key)
    try:
        result = _service_request(client, args)
    except OSError as exc:  # URLError included: connection refused, timeout, DNS
        print(f"whispr {args.command}: cannot reach the node: {exc}", file=sys.stderr)
        return 1
    text = "" if result.body is None else json.dumps(result.body)
    print(text, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _service_request(client: ApiClient, args: argparse.Namespace) -> ApiResult:
    """The API call of one service-API command. Raises OSError when the node is unreachable."""
    if args.command == "conversation":
        if args.action == "create":
            result = client.create_conversation(args.ids)
        elif len(args.ids) != 2:
            raise ValueError(f"{args.action} takes CONVERSATION USER")
        elif args.action == "add-member":
            result = client.add_member(*args.ids)
        else:
            result = client.remove_member(*args.ids)
    elif args.command == "message":
        result = client.post_message(
            args.conversation,
            {
                "sender_id": args.sender,
                "client_message_id": args.client_message_id or str(uuid.uuid4()),
                "content": args.content,
            },
        )
    elif args.command == "notify":
        result = client.notify(args.user, {"type": args.type, "title": args.title, "body": args.body})
    elif args.command == "user":
        result = client.set_active(args.user, args.action == "activate")
    elif args.command == "disconnect":
        result = client.disconnect(args.user, args.device)
    else:
        result = client.connections()
    return result


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {
        name: value
        for name in ("host", "port", "data_dir", "store_url", "redis_url", "node_id")
        if (value := getattr(args, name, None)) is not None
    }
    if args.dev:
        overrides["dev"] = True
    return replace(settings, **overrides).with_dev_defaults()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "serve":
            from whispr.app import serve
            from whispr.gateway.drain import drain_config
            from whispr.workers import check_workers, serve_workers

            settings.validate()
            check_workers(settings, args.workers)
            if args.workers > 1:
                drain_config(settings)  # the workers would each refuse it: say so once
                return serve_workers(settings, args.workers, list(sys.argv[1:] if argv is None else argv))
            serve(settings, reuse_port=args.reuse_port)
        elif args.command == "migrate":
            from whispr.app import migrate

            versions = migrate(settings)
            print(f"applied migrations: {versions}" if versions else "schema is up to date")
        elif args.command == "token":
            from whispr.app import dev_token

            print(dev_token(settings, args.user, args.device, args.ttl, args.device_type))
        else:
            return _service_call(args, settings)
    except (ConfigError, ValueError) as exc:
        print(f"whispr {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0
