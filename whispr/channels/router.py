"""Topic routing (`Phoenix.Socket.channel/3`): "user:*" → UserChannel."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .base import Channel

ChannelFactory = Callable[[], Channel]
"""Makes one channel instance per join; usually the `Channel` subclass itself."""


class Router:
    """Maps topics to channel factories; the first matching pattern wins, in declaration order.

    A pattern is an exact topic ("lobby") or a prefix ending in a single trailing `*`
    ("room:*" matches "room:" and "room:42"), as Phoenix allows.
    """

    __slots__ = ("_routes",)

    def __init__(self, routes: Iterable[tuple[str, ChannelFactory]]) -> None:
        """Raises:
        ValueError: a pattern has a `*` anywhere but at its end (Phoenix: "channels using
            splat patterns must end with *").
        """
        compiled: list[tuple[str, bool, ChannelFactory]] = []
        for pattern, factory in routes:
            wildcard = pattern.endswith("*")
            prefix = pattern[:-1] if wildcard else pattern
            if "*" in prefix:
                raise ValueError(f"channel pattern {pattern!r}: a splat pattern must end with a single *")
            compiled.append((prefix, wildcard, factory))
        self._routes = tuple(compiled)

    def route(self, topic: str) -> ChannelFactory | None:
        """The factory for `topic`, or None (the join is answered "unmatched topic")."""
        for prefix, wildcard, factory in self._routes:
            if topic.startswith(prefix) if wildcard else topic == prefix:
                return factory
        return None
