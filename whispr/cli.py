"""The `whispr` command: `serve`, `migrate`, `token`.

Settings come from `WHISPR_*` environment variables (see `whispr.config`); flags override them.
Exit codes: 0 success, 2 bad usage or configuration (the message says which setting), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

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
    serve.add_argument("--redis", dest="redis_url", help="redis://... for a cluster (default: in-process)")
    serve.add_argument("--node-id", help="this node's name in logs, metrics and the cluster")

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
    return parser


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

            settings.validate()
            serve(settings)
        elif args.command == "migrate":
            from whispr.app import migrate

            versions = migrate(settings)
            print(f"applied migrations: {versions}" if versions else "schema is up to date")
        elif args.command == "token":
            from whispr.app import dev_token

            print(dev_token(settings, args.user, args.device, args.ttl, args.device_type))
    except (ConfigError, ValueError) as exc:
        print(f"whispr {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0
