"""Where a replay starts, and whether it skipped anything (pure; shared by every store backend).

A replay after position `after_seq` starts at the later of `after_seq + 1` and the oldest entry still
within retention (the *floor*), then reads consecutive seqs: a page never has a hole. It is
`recovered` only when it starts right after the requested position and that position exists.
"""

from __future__ import annotations


def check_page_args(after_seq: int, limit: int) -> None:
    """Raises ValueError for a negative position or a limit below 1."""
    if after_seq < 0:
        raise ValueError(f"after_seq must be >= 0, got {after_seq}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def replay_start(after_seq: int, head: int, floor: int | None) -> tuple[int, bool]:
    """Return `(first seq to read, recovered)`.

    Args:
        after_seq: the client's position.
        head: the newest seq that exists (0 if none).
        floor: the seq of the oldest entry within retention, None if none is.
    """
    start = max(after_seq + 1, head + 1 if floor is None else floor)
    return start, after_seq <= head and start == after_seq + 1
