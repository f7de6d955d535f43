"""Abuse detectors: turn limit refusals into `blocked` verdicts (contract §5; spec §9.2; reliability S20).

| detector | evidence | blocks |
|---|---|---|
| connection_abuse | a connect attempt over the connect rate (> 20 per 300 s from one IP) | the IP |
| channel_hopping | a join over the join rate (> 30 per 60 s on one socket) | the user |
| message_spam | `spam_strikes` message-rate refusals in a row on one socket (3) | the user |

A verdict blocks its subject in the shared `Limiter` for `block_for` seconds (so every node refuses
it: the gatekeeper checks IP and user blocks at the upgrade and on every join, and `Limiter.hit`
refuses every connect and send of a blocked subject), writes one `suspicious_activity` audit
record and emits `ABUSE_DETECTED`. The socket layer answers a blocked socket with close 1008
(contract §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from whispr.observability import telemetry
from whispr.security.audit import AuditLog
from whispr.security.limits import Limiter, ip_subject, user_subject
from whispr.security.tokens import VerifiedToken


class Detector(StrEnum):
    CONNECTION_ABUSE = "connection_abuse"
    CHANNEL_HOPPING = "channel_hopping"
    MESSAGE_SPAM = "message_spam"


@dataclass(frozen=True, slots=True)
class AbuseConfig:
    """Contract §5 defaults: 3 refusals in a row is spam; a block lasts 5 minutes."""

    spam_strikes: int = 3
    block_for: float = 300.0


@dataclass(frozen=True, slots=True)
class Blocked:
    """A verdict: the subject is blocked for `seconds`."""

    detector: Detector
    seconds: float


class AbuseDetector:
    """Stateless judge; the evidence (refusal counts) is kept by the caller, per socket.

    Every method blocks on one `Limiter.block` call (a Redis round trip with the shared limiter) and
    is cancellable. Raises only what the limiter raises.
    """

    def __init__(self, limiter: Limiter, audit: AuditLog, config: AbuseConfig = AbuseConfig()) -> None:
        self._limiter = limiter
        self._audit = audit
        self._config = config

    async def connect_refused(self, client_ip: str) -> Blocked:
        """Connection abuse: an attempt over the connect rate blocks the IP ("429, then blocked for 5 min")."""
        return await self._block(Detector.CONNECTION_ABUSE, ip_subject(client_ip), client_ip, None)

    async def join_refused(self, identity: VerifiedToken, client_ip: str) -> Blocked:
        """Channel hopping: a join over the join rate blocks the user ("rate_limit_exceeded, then blocked")."""
        return await self._block(Detector.CHANNEL_HOPPING, user_subject(identity.user_id), client_ip, identity)

    async def message_refused(self, refusals_in_a_row: int, identity: VerifiedToken, client_ip: str) -> Blocked | None:
        """Message spam: the user is blocked once `refusals_in_a_row` reaches `spam_strikes`; else None."""
        if refusals_in_a_row < self._config.spam_strikes:
            return None
        return await self._block(Detector.MESSAGE_SPAM, user_subject(identity.user_id), client_ip, identity)

    async def _block(self, detector: Detector, subject: str, client_ip: str, identity: VerifiedToken | None) -> Blocked:
        seconds = self._config.block_for
        await self._limiter.block(subject, seconds)
        self._audit.suspicious_activity(detector=detector, blocked_for=seconds, client_ip=client_ip, identity=identity)
        telemetry.emit(telemetry.ABUSE_DETECTED, metadata={"detector": detector.value})
        return Blocked(detector, seconds)
