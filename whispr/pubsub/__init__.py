"""Local topic registry with encode-once fan-out; the cross-node bridge builds on it."""

from .local import FrameSink, PubSub, Subscriber

__all__ = ["FrameSink", "PubSub", "Subscriber"]
