"""The `whispr` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="whispr", description="Whispr real-time gateway")
    parser.add_subparsers(dest="command", required=True)
    parser.parse_args(argv)
    return 0
