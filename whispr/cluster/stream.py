"""What the ClusterManager needs from a shared, append-only stream, and the error it raises.

`whispr.adapters.redis_streams.RedisStream` implements `ClusterStream` on a Redis Stream. The
interface is small on purpose: append one entry (XADD), and pump every entry after a given id
into a Trio channel (XREAD BLOCK from an explicit last id, resumed from that id after any failure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

__all__ = ["ClusterStream", "ClusterUnavailable", "PumpItem", "Record", "parse_id"]


class ClusterUnavailable(Exception):
    """The stream (Redis) could not be reached or did not answer in time; raised `from` the cause."""


@dataclass(frozen=True, slots=True)
class Record:
    """One stream entry as stored: its id (`<ms>-<seq>`, ms on the stream server's clock) and fields."""

    id: str
    fields: Mapping[str, str]


PumpItem = Sequence[Record] | ClusterUnavailable
"""What a pump sends: the records of one successful read (maybe none), or the error of a failed one."""


def parse_id(stream_id: str) -> tuple[int, int]:
    """`"<ms>-<seq>"` as a pair of ints, which orders like the stream does.

    Raises:
        ValueError: not a stream id.
    """
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class ClusterStream(Protocol):
    """A shared append-only log of membership entries."""

    async def append(self, fields: Mapping[str, str]) -> str:
        """Append one entry and return its id. Blocks for one round trip; cancellable.

        Raises:
            ClusterUnavailable: the stream is unreachable or timed out (the entry may or may not
                have been appended).
        """
        ...

    async def pump(self, after: str, send: trio.MemorySendChannel[PumpItem], *, max_backoff: float) -> None:
        """Send every entry with an id greater than `after` into `send`, in order, forever.

        Each read's records go as one item; a read that found nothing sends nothing, except the
        first good read after a failure, sent even when empty (the news the stream is back). A failed read sends its `ClusterUnavailable`, waits
        (backoff doubling up to `max_backoff` seconds) and reads again from the last id delivered,
        so nothing is skipped across a reconnect unless the stream trimmed it meanwhile. Waits when
        `send` is full. Returns when the receiving end is closed; runs until cancelled otherwise.
        """
        ...
