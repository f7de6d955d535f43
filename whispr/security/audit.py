"""The security audit trail: one structured record per security-relevant event, on logger `whispr.audit`.

Rules (reliability S8, S20; OWASP Logging and WebSocket cheat sheets):
- Records carry who and where (user id, device id, client IP), what (event, reason, limit,
  detector) and the token's hash. Never the token, never a message body, never a query string:
  the methods below take only these fields, so nothing else can reach the audit log.
- Each record is one line, `event key=value ...`, with values that could contain spaces or
  control characters JSON-quoted (no log injection), and the same fields as a dict in the
  record's `audit` attribute for structured (JSON) handlers.
- Levels: INFO for accepted connections and revocations, WARNING for everything refused or detected.

Events: connection_attempt (every upgrade attempt that got past nothing worse; refused ones say
why), auth_failure, limit_exceeded, suspicious_activity, revocation.
"""

from __future__ import annotations

import json
import logging
import re
from enum import StrEnum

from whispr.security.tokens import VerifiedToken

AUDIT_LOGGER = "whispr.audit"
MAX_USER_AGENT_CHARS = 200
_BARE = re.compile(r"[A-Za-z0-9._:@/+\-]+")


class AuditEvent(StrEnum):
    CONNECTION_ATTEMPT = "connection_attempt"
    AUTH_FAILURE = "auth_failure"
    LIMIT_EXCEEDED = "limit_exceeded"
    SUSPICIOUS_ACTIVITY = "suspicious_activity"
    REVOCATION = "revocation"


class AuditLog:
    """Writes audit records. Synchronous, never raises (logging's own error handling applies)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(AUDIT_LOGGER)

    def connection_attempt(
        self,
        *,
        client_ip: str,
        accepted: bool,
        reason: str | None = None,
        identity: VerifiedToken | None = None,
        user_agent: str | None = None,
    ) -> None:
        """An upgrade attempt and its outcome (`reason` says why a refused one was refused)."""
        self._write(
            logging.INFO if accepted else logging.WARNING,
            AuditEvent.CONNECTION_ATTEMPT,
            outcome="accepted" if accepted else "refused",
            reason=reason,
            client_ip=client_ip,
            **_who(identity),
            user_agent=user_agent[:MAX_USER_AGENT_CHARS] if user_agent is not None else None,
        )

    def auth_failure(
        self, *, client_ip: str, reason: str, token_hash: str | None, user_agent: str | None = None
    ) -> None:
        """A refused token: `reason` from `AuthError`, `token_hash` from `tokens.token_hash` (None: no token)."""
        self._write(
            logging.WARNING,
            AuditEvent.AUTH_FAILURE,
            reason=reason,
            client_ip=client_ip,
            token_hash=token_hash,
            user_agent=user_agent[:MAX_USER_AGENT_CHARS] if user_agent is not None else None,
        )

    def limit_exceeded(self, *, limit: str, client_ip: str, identity: VerifiedToken | None = None) -> None:
        """A request refused by limit `limit` (connections_per_ip, connect, message, join, message_size)."""
        self._write(logging.WARNING, AuditEvent.LIMIT_EXCEEDED, limit=limit, client_ip=client_ip, **_who(identity))

    def suspicious_activity(
        self, *, detector: str, blocked_for: float, client_ip: str, identity: VerifiedToken | None = None
    ) -> None:
        """An abuse detector fired and blocked the IP or user for `blocked_for` seconds."""
        self._write(
            logging.WARNING,
            AuditEvent.SUSPICIOUS_ACTIVITY,
            detector=detector,
            blocked_for=blocked_for,
            client_ip=client_ip,
            **_who(identity),
        )

    def revocation(self, *, user_id: str, device_id: str | None, reason: str) -> None:
        """A user's sockets (one device's, or all when `device_id` is None) were revoked."""
        self._write(logging.INFO, AuditEvent.REVOCATION, reason=reason, user_id=user_id, device_id=device_id)

    def _write(self, level: int, event: AuditEvent, **fields: str | float | None) -> None:
        if not self._logger.isEnabledFor(level):
            return  # what `log` would decide anyway, before the line is built (one per connect)
        kept = {key: value for key, value in fields.items() if value is not None}
        line = " ".join([event.value, *(f"{key}={_format(value)}" for key, value in kept.items())])
        self._logger.log(level, "%s", line, extra={"audit": {"event": event.value, **kept}})


def _who(identity: VerifiedToken | None) -> dict[str, str | None]:
    if identity is None:
        return {}
    return {"user_id": identity.user_id, "device_id": identity.device_id, "token_hash": identity.token_hash}


def _format(value: str | float) -> str:
    text = value if isinstance(value, str) else f"{value:g}"
    return text if _BARE.fullmatch(text) else json.dumps(text)
