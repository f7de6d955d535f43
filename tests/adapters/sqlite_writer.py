"""Child process for the SIGKILL test: appends forever and prints `seq id` after each ack.

Usage: python -m tests.adapters.sqlite_writer PATH CONVERSATION_ID
"""

from __future__ import annotations

import sys

import trio

from tests.adapters.store_helpers import append_message
from whispr.adapters.sqlite_store import open_sqlite_store


async def main(path: str, conversation_id: str) -> None:
    async with open_sqlite_store(path) as store:

        async def sender(n: int) -> None:
            for i in range(10**9):
                message, _ = await append_message(
                    store, conversation_id, f"user{n}", "phone", f"{n}-{i}", "text", "x" * 100, {}, None
                )
                sys.stdout.write(f"{message.seq} {message.id}\n")
                sys.stdout.flush()

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(sender, n)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
