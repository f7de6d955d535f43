"""Channel behaviour, results and topic routing; see `whispr.channels.base` for the supervision model."""

from .base import (
    NOREPLY,
    Channel,
    ChannelSocket,
    HandleInfoResult,
    HandleInResult,
    JoinError,
    JoinOk,
    NoReply,
    ReplyResult,
    Stop,
    error,
    ok,
    reply,
    reply_error,
    reply_ok,
    stop,
)
from .router import ChannelFactory, Router

__all__ = [
    "NOREPLY",
    "Channel",
    "ChannelFactory",
    "ChannelSocket",
    "HandleInResult",
    "HandleInfoResult",
    "JoinError",
    "JoinOk",
    "NoReply",
    "ReplyResult",
    "Router",
    "Stop",
    "error",
    "ok",
    "reply",
    "reply_error",
    "reply_ok",
    "stop",
]
