"""The bounded queue of server frames that the kernel could not take at once.

A connection writes straight to its socket while nothing is queued (architecture.md, hot path);
only the bytes the kernel refused land here, and the connection's writer drains them, many
frames per `sendmsg`. Frames leave in the order they entered.

Bound (contract.md §5, style.md 13): a frame is accepted while fewer than `max_frames` frames and
fewer than `max_bytes` bytes are queued, so memory stays under `max_bytes` plus one frame (one
frame larger than the bound still fits in an empty queue). Over the bound, a droppable frame
(typing, presence) is discarded; a durable one first evicts the queued droppable frames, and if
that is not enough the queue reports an overflow: the connection closes with 1013.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from whispr.observability import telemetry

Chunk = bytes | memoryview


class Outbox:
    """FIFO of pending frames with a frame and byte bound and a droppable-first policy."""

    __slots__ = ("_droppable", "_entries", "_head_started", "_max_bytes", "_max_frames", "nbytes")

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._entries: deque[tuple[Chunk, bool]] = deque()
        self.nbytes = 0
        """Bytes queued (what is still to write)."""
        # Invariant: the number of droppable entries in `_entries`.
        self._droppable = 0
        # Invariant: True when the head entry was partly written; it must then be finished
        # before anything else, so it is never evicted (a cut frame corrupts the stream).
        self._head_started = False

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, frame: Chunk, droppable: bool = False) -> bool:
        """Queue `frame`; False when it does not fit (an overflow: the caller closes with 1013).

        A droppable frame over the bound is discarded (counted in `SLOW_CONSUMER_DROPPED`) and
        True is returned: dropping is the policy, not an overflow.
        """
        if len(self._entries) >= self._max_frames or self.nbytes >= self._max_bytes:
            if droppable:
                telemetry.emit(telemetry.SLOW_CONSUMER_DROPPED, {"dropped": 1}, {"reason": "droppable"})
                return True
            if not self._evict_droppable() or (
                len(self._entries) >= self._max_frames or self.nbytes >= self._max_bytes
            ):
                return False
        self._entries.append((frame, droppable))
        self.nbytes += len(frame)
        self._droppable += droppable
        return True

    def push_final(self, frame: bytes) -> None:
        """Queue the close frame after everything queued, beyond the bound (it is the last frame)."""
        self._entries.append((frame, False))
        self.nbytes += len(frame)

    def discard_unstarted(self) -> None:
        """Drop every frame not yet begun on the wire (before a 1013 close)."""
        keep = self._entries[0] if self._head_started else None
        self._entries.clear()
        self.nbytes = 0
        self._droppable = 0
        if keep is not None:
            self._entries.append(keep)
            self.nbytes = len(keep[0])

    def head(self, max_chunks: int) -> list[Chunk]:
        """Up to `max_chunks` frames from the front, for one vectored write."""
        return [chunk for chunk, _ in islice(self._entries, max_chunks)]

    def consume(self, sent: int) -> None:
        """Remove `sent` bytes written from the front; a frame cut mid-way keeps its rest at the head."""
        entries = self._entries
        self.nbytes -= sent
        while sent:
            chunk, droppable = entries[0]
            size = len(chunk)
            if sent < size:
                entries[0] = (memoryview(chunk)[sent:], droppable)
                self._head_started = True
                return
            entries.popleft()
            self._droppable -= droppable
            self._head_started = False
            sent -= size

    def _evict_droppable(self) -> bool:
        """Drop the queued droppable frames (never a started head); whether any was dropped."""
        if not self._droppable:
            return False
        entries = self._entries
        head = entries.popleft() if self._head_started else None
        kept = [entry for entry in entries if not entry[1]]
        dropped = len(entries) - len(kept)
        entries.clear()
        if head is not None:
            entries.append(head)
        entries.extend(kept)
        self.nbytes = sum(len(chunk) for chunk, _ in entries)
        self._droppable = 1 if head is not None and head[1] else 0
        if not dropped:
            return False
        telemetry.emit(telemetry.SLOW_CONSUMER_DROPPED, {"dropped": dropped}, {"reason": "droppable"})
        return True
