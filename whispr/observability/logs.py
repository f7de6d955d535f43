"""Logging for whispr: named loggers, a per-connection context, secret redaction, two formats.

Loggers (one per layer; `logging.getLogger(NAME)`):

| logger | what |
|---|---|
| `whispr.gateway` | listener, handshakes, sockets opened and closed, slow consumers |
| `whispr.channel` | joins, leaves, channel callback crashes |
| `whispr.delivery` | store, offline queue, replay |
| `whispr.cluster` | pub/sub bridge, membership, nodes up and down |
| `whispr.resilience` | circuit breakers |
| `whispr.audit` | security decisions: limits, abuse blocks, revocations (token hashes, never tokens) |
| `whispr.runtime` | event-loop lag |
| `supervisors` | OTP-style supervisor reports (`extra={"report": {...}}`) |

Level policy:
- ERROR: a user callback crashed, or something that "should never happen".
- WARNING: a slow consumer dropped, a join refused over a limit, abuse blocked, a circuit opened,
  a node went down, the event loop lagged past its threshold.
- INFO: node start and stop, socket open and close, upgrades refused, nodes up.
- DEBUG: frame and message level. Never log once per message at INFO or above.

Formats (`configure_logging(format=...)`):
- `"json"` (production): one JSON object per line with `ts` (ISO 8601 UTC, ms), `level`,
  `logger`, `msg`, the connection context (`node`, `conn_id`, `user_id`, `device_id`, when set),
  every `extra` field (dicts stay structured, so a supervisor report is a `report` object), and
  `exc_info` (the traceback as one string) when there is one.
- `"text"` (development): `ts LEVEL logger message key=value …` on one line, newlines in the
  message escaped; a dict extra (a supervisor report) renders as its own `key=value` pairs, nested
  dicts as `{key=value …}` down to `REPORT_DEPTH`. A traceback, if any, follows on indented lines.

The connection context lives in a `contextvars.ContextVar`: a connection task enters
`with log_context(conn_id=…, user_id=…, device_id=…):` and every record logged by that task, and by
the tasks and threads it starts afterwards, carries those fields. The node name is set once by
`configure_logging(node=…)`.

Every handler installed here has `SecretsFilter`, which rewrites the record before any formatter
sees it: JWT-looking strings (`eyJ…`), phoenix.js `base64url.bearer.phx.…` protocols, `Bearer …`
credentials and the values of `token=`, `access_token=`, `api_key=`, `password`, `secret` and
`authorization` become `[REDACTED]`, in the message, its arguments, string extras (nested ones
too) and tracebacks.

`attach_telemetry_logging()` subscribes to the telemetry events of `telemetry.py`: a WARNING when
the event loop lags, and, when DEBUG is on, a trace of every event on its layer's logger.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace
from typing import Literal, TextIO

from whispr.observability import telemetry

__all__ = [
    "AUDIT",
    "CHANNEL",
    "CLUSTER",
    "DELIVERY",
    "GATEWAY",
    "REDACTED",
    "REPORT_DEPTH",
    "RESILIENCE",
    "RUNTIME",
    "SUPERVISORS",
    "JsonFormatter",
    "LogContext",
    "SecretsFilter",
    "TextFormatter",
    "attach_telemetry_logging",
    "configure_logging",
    "current_context",
    "log_context",
    "redact",
]

GATEWAY = "whispr.gateway"
CHANNEL = "whispr.channel"
DELIVERY = "whispr.delivery"
CLUSTER = "whispr.cluster"
RESILIENCE = "whispr.resilience"
RUNTIME = "whispr.runtime"
AUDIT = "whispr.audit"
SUPERVISORS = "supervisors"

REDACTED = "[REDACTED]"
REPORT_DEPTH = 3
"""Nesting depth to which the text format renders dict extras; deeper levels print as `{…}`."""

_VALUE_LIMIT = 200

_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # key=value / key: value / "key": "value" for credential-bearing keys (query strings, dicts, headers).
    (
        re.compile(
            r"""(?ix)
            \b((?:access_|refresh_|id_)?token|api_?key|password|passwd|secret|authorization)
            (["']?\s*[:=]\s*["']?)
            (?:(?:bearer|basic)\s+)?
            [^\s"'&,;}\]]+
            """
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"\bbase64url\.bearer\.phx\.[A-Za-z0-9_\-]+=*"), REDACTED),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]+=*"), f"Bearer {REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*){0,2}"), REDACTED),
)


def redact(text: str) -> str:
    """`text` with every credential-looking substring replaced by `[REDACTED]`."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class LogContext:
    """The per-connection fields added to every record (None: not known here)."""

    conn_id: str | None = None
    user_id: str | None = None
    device_id: str | None = None


_CONTEXT_FIELDS = ("node", *(f.name for f in fields(LogContext)))
_NO_CONTEXT = LogContext()
_context: ContextVar[LogContext] = ContextVar("whispr_log_context", default=_NO_CONTEXT)
_STANDARD_ATTRS = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
        *_CONTEXT_FIELDS,
    }
)


def current_context() -> LogContext:
    """The connection context of the calling task."""
    return _context.get()


@contextmanager
def log_context(
    *, conn_id: str | None = None, user_id: str | None = None, device_id: str | None = None
) -> Iterator[LogContext]:
    """Add connection fields to every record logged inside the block (and by tasks started in it).

    Fields left None keep their outer value; the outer context is restored on exit.
    """
    given = {"conn_id": conn_id, "user_id": user_id, "device_id": device_id}
    context = replace(_context.get(), **{key: value for key, value in given.items() if value is not None})
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


def bind_log_context(*, conn_id: str | None = None, user_id: str | None = None, device_id: str | None = None) -> None:
    """Like `log_context`, for the rest of the calling task: Trio runs each task in its own copy
    of the context, so a connection's task binds its fields once and every record it logs has them."""
    given = {"conn_id": conn_id, "user_id": user_id, "device_id": device_id}
    _context.set(replace(_context.get(), **{key: value for key, value in given.items() if value is not None}))


class ContextFilter(logging.Filter):
    """Adds `node`, `conn_id`, `user_id` and `device_id` (None when unset) to every record."""

    def __init__(self, node: str | None) -> None:
        super().__init__()
        self._node = node

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        record.node = self._node
        record.conn_id = context.conn_id
        record.user_id = context.user_id
        record.device_id = context.device_id
        return True


class SecretsFilter(logging.Filter):
    """Redacts credentials from a record's message, extras and traceback before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            message = f"{record.msg!r} (arguments did not match the format)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in _extras(record).items():
            setattr(record, key, _redact_value(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD_ATTRS}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _exception_text(record: logging.LogRecord, formatter: logging.Formatter) -> str | None:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    text = record.exc_text or None
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                document[key] = value
        document.update(_extras(record))
        exception = _exception_text(record, self)
        if exception:
            document["exc_info"] = exception
        return json.dumps(document, default=repr, ensure_ascii=False)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    if " " in text and isinstance(value, str):
        text = repr(text)
    return text if len(text) <= _VALUE_LIMIT else text[: _VALUE_LIMIT - 1] + "…"


def _render(value: object, depth: int) -> str:
    if not isinstance(value, Mapping):
        return _short(value)
    if depth >= REPORT_DEPTH:
        return "{…}"
    return "{" + " ".join(f"{key}={_render(item, depth + 1)}" for key, item in value.items()) + "}"


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger message key=value …` on one line; a traceback follows, indented.

    A dict extra renders as its own pairs; a key already on the line gets the extra's name as a
    prefix (`node=n1 telemetry.node=n2`).
    """

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), f"{record.levelname:<7}", record.name, record.getMessage().replace("\n", "\\n")]
        pairs: dict[str, object] = {key: getattr(record, key, None) for key in _CONTEXT_FIELDS}
        pairs = {key: value for key, value in pairs.items() if value is not None}
        for name, extra in _extras(record).items():
            items = extra.items() if isinstance(extra, Mapping) else [(name, extra)]
            for key, value in items:
                pairs[f"{name}.{key}" if key in pairs else key] = value
        parts.extend(f"{key}={_render(value, 1)}" for key, value in pairs.items())
        line = " ".join(parts)
        exception = _exception_text(record, self)
        if exception:
            line += "\n" + "\n".join("    " + text for text in exception.splitlines())
        return line


_HANDLER_MARK = "_whispr_handler"


def configure_logging(
    format: Literal["json", "text"] = "text",
    level: int | str = logging.INFO,
    *,
    node: str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install one stream handler on the root logger, with context and secrets filters.

    Replaces the handler a previous call installed (other handlers are left alone), sets the root
    level, and returns the new handler.

    Args:
        format: "json" for production, "text" for development.
        level: the root logger's level.
        node: this node's name, added to every record.
        stream: where to write (default: stderr).

    Raises:
        ValueError: unknown `format`.
    """
    if format == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif format == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f'log format must be "json" or "text", got {format!r}')
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter(node))
    handler.addFilter(SecretsFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


# The layer logger of each event's DEBUG trace. The layers log their own decisions at INFO and
# above (the gateway: sockets opened, closed, slow consumers; security/audit.py: limits, abuse;
# supervisors/reports.py: restarts), so the trace never duplicates them outside DEBUG.
_EVENT_LOGGERS: dict[str, str] = {
    telemetry.SOCKET_CONNECTED: GATEWAY,
    telemetry.SOCKET_REFUSED: GATEWAY,
    telemetry.SOCKET_CLOSED: GATEWAY,
    telemetry.CHANNEL_JOINED: CHANNEL,
    telemetry.CHANNEL_JOIN_REFUSED: CHANNEL,
    telemetry.CHANNEL_LEFT: CHANNEL,
    telemetry.CHANNEL_CRASHED: CHANNEL,
    telemetry.MESSAGE_RECEIVED: CHANNEL,
    telemetry.MESSAGE_SENT: GATEWAY,
    telemetry.REPLY_LATENCY: CHANNEL,
    telemetry.MESSAGE_DELIVERED: DELIVERY,
    telemetry.OUTBOX_DEPTH: GATEWAY,
    telemetry.SLOW_CONSUMER_DROPPED: GATEWAY,
    telemetry.LIMIT_EXCEEDED: AUDIT,
    telemetry.ABUSE_DETECTED: AUDIT,
    telemetry.PRESENCE_DIFF: CHANNEL,
    telemetry.RECOVERY: DELIVERY,
    telemetry.SUPERVISOR_RESTART: SUPERVISORS,
    telemetry.CIRCUIT_STATE: RESILIENCE,
    telemetry.DEPENDENCY_CALL: RESILIENCE,
    telemetry.NODE_UP: CLUSTER,
    telemetry.NODE_DOWN: CLUSTER,
    telemetry.LOOP_LAG: RUNTIME,
}


def attach_telemetry_logging(handler_id: str = "whispr.logs", *, lag_warning: float = 0.1) -> None:
    """Log telemetry events: message = event name, `extra={"telemetry": {**metadata, **measurements}}`.

    - LOOP_LAG at WARNING on `whispr.runtime` when the lag reaches `lag_warning` seconds (B11's
      p99 target); nothing else logs it.
    - Every event at DEBUG on its layer's logger, if that logger is enabled for DEBUG now (else
      those events are not attached at all, and their emits stay one dict lookup).

    Undo with `telemetry.detach(handler_id)`.

    Raises:
        ValueError: `handler_id` is already attached.
    """
    loggers = {event: logging.getLogger(name) for event, name in _EVENT_LOGGERS.items()}

    def handle(event: str, measurements: telemetry.Measurements, metadata: telemetry.Metadata) -> None:
        logger = loggers[event]
        level = logging.DEBUG
        if event == telemetry.LOOP_LAG and measurements.get("lag", 0.0) >= lag_warning:
            level = logging.WARNING
        if logger.isEnabledFor(level):
            logger.log(level, "%s", event, extra={"telemetry": {**metadata, **measurements}})

    events = [event for event, logger in loggers.items() if logger.isEnabledFor(logging.DEBUG)]
    if telemetry.LOOP_LAG not in events:
        events.append(telemetry.LOOP_LAG)
    telemetry.attach(handler_id, events, handle)
