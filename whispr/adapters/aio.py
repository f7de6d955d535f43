"""The trio-asyncio bridge, for the adapters whose libraries are asyncio-only (psycopg, redis-py).

Rules (dependencies.md §2):
- Open the bridge once, at the root, before any supervisor or nursery that will call into asyncio:
  `async with open_bridge(): ...`. A task whose nursery was opened outside it cannot cross.
- Cross with `await run_aio(fn, *args)` (never `aio_as_trio(fn(*args))`: that builds the coroutine
  outside the asyncio context). A crossing costs ~0.5 ms: cross once per batch, not per item.
- Cancellation crosses the bridge: cancelling the Trio caller cancels the asyncio task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import trio_asyncio

T = TypeVar("T")

_log = logging.getLogger("whispr.adapters")


def _log_unhandled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An exception in an unsupervised asyncio task (e.g. a library's background task) is logged.

    trio-asyncio's default re-raises it out of the loop and takes the whole Trio tree down.
    """
    _log.error("unhandled error in an asyncio task: %s", context.get("message"), exc_info=context.get("exception"))


@asynccontextmanager
async def open_bridge() -> AsyncIterator[None]:
    """Run an asyncio loop inside Trio for the duration of the block.

    Resource handling: close every asyncio client (pools, Redis) before leaving the block.
    """
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_unhandled)
        yield


async def run_aio(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """Await the asyncio coroutine function `fn(*args)` from Trio; cancellable; exceptions pass unchanged."""
    return cast(T, await trio_asyncio.aio_as_trio(fn)(*args))
