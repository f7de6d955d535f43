"""The socket layer's call points: `Gatekeeper.admit` at the upgrade, a `SocketGuard` per accepted socket.

At the upgrade (contract §1, §5; reliability S1, S2, S12):

    client IP -> origin -> IP blocked? + connect rate (+ connection abuse) -> per-IP slot -> token -> user blocked?

Cheap stateless checks first; the attempt is counted before the slot is taken, so refused and
garbage attempts still spend the connect budget; the slot is taken before the token is verified,
so pending handshakes count towards the per-IP cap. Outcomes: 403 for origin and token failures,
429 with `Retry-After` for caps, rates and blocks. Every attempt writes exactly one connection or
auth audit record (plus `limit_exceeded` / `suspicious_activity` when those fire).

On a socket: `check_join` before each `phx_join`, `check_message` before each `send_message` is
stored. A `Refusal` is sent as the `phx_reply` error (`response()`); when its `close_code` is set
(1008, blocked by abuse detection, contract §6) the socket is closed after that reply. A block set
on any socket or node refuses every later join and send of that user, on sockets already open too:
the message-rate hit itself refuses a blocked user (`Limiter.hit`), so this costs no extra call.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from whispr.gateway.transport import Refuse, UpgradeRequest
from whispr.observability import telemetry
from whispr.security.abuse import AbuseDetector
from whispr.security.audit import AuditLog
from whispr.security.client_ip import ClientIpResolver
from whispr.security.limits import (
    MICROS,
    ConnectionSlots,
    Limiter,
    LimitsConfig,
    SlidingWindow,
    content_too_large,
    ip_subject,
    user_subject,
)
from whispr.security.origin import OriginPolicy
from whispr.security.tokens import AuthError, TokenVerifier, VerifiedToken, token_hash

CLOSE_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1; contract §6: blocked by abuse detection
CAP_RETRY_AFTER = 10.0  # a per-IP slot frees when one of the IP's sockets closes; there is no knowing when
USER_DIRECTORY_RETRY_AFTER = 5.0  # seconds before a client should try again while the directory is down


class DirectoryUnavailable(Exception):
    """The user directory cannot answer (its store or service is down): the upgrade gets 503."""


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted upgrade. `release` gives the per-IP slot back: pass it as `Accept(on_closed=...)`,
    or call it if the upgrade is abandoned later. Idempotent, synchronous, never raises."""

    token: VerifiedToken
    client_ip: str
    release: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused join or push. `reason` is the wire reason (contract §2, §3)."""

    reason: str
    retry_after_ms: int | None = None
    close_code: int | None = None  # set: close the socket with it after sending the error reply

    def response(self) -> dict[str, Any]:
        """The `phx_reply` error response: `{"reason": ...}` plus `retry_after_ms` when known."""
        if self.retry_after_ms is None:
            return {"reason": self.reason}
        return {"reason": self.reason, "retry_after_ms": self.retry_after_ms}


class Gatekeeper:
    """Admits or refuses upgrades; builds each socket's `SocketGuard`. One per node."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        origins: OriginPolicy,
        client_ips: ClientIpResolver,
        limiter: Limiter,
        detector: AbuseDetector,
        audit: AuditLog,
        limits: LimitsConfig,
        users: Callable[[str], Awaitable[bool]],
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        """`users(user_id)` tells whether the user is active in the user directory (contract §1);
        it raises `DirectoryUnavailable` when it cannot tell, which refuses the upgrade with 503."""
        self._verifier = verifier
        self._users = users
        self._origins = origins
        self._client_ips = client_ips
        self._limiter = limiter
        self._detector = detector
        self._audit = audit
        self._limits = limits
        self._clock = clock
        self.slots = ConnectionSlots(limits.connections_per_ip)

    async def admit(self, request: UpgradeRequest, token: str | None) -> Admission | Refuse:
        """Decide an upgrade. `token` is what the socket layer extracted (query, authToken
        subprotocol or bearer header), None when there was none.

        Blocks on at most two limiter calls (Redis round trips with the shared limiter) and one
        user-directory lookup; the token check is CPU only. Cancellable: a cancelled call holds no slot. Raises only what the
        limiter raises (nothing with `LocalLimiter` or `FallbackLimiter`); `peer` must be an IP.
        """
        headers = request.headers
        user_agent = headers.get("user-agent")
        client_ip = self._client_ips.resolve(request.peer[0], headers)

        def refused(
            status: int, reason: str, retry_after: float | None = None, who: VerifiedToken | None = None
        ) -> Refuse:
            self._audit.connection_attempt(
                client_ip=client_ip, accepted=False, reason=reason, identity=who, user_agent=user_agent
            )
            if retry_after is None:
                return Refuse(status, reason)
            return Refuse(status, reason, (("Retry-After", str(max(1, math.ceil(retry_after)))),))

        if not self._origins.allows(headers.get("origin")):
            return refused(403, "bad_origin")
        decision = await self._limiter.hit(self._limits.connect_rate, ip_subject(client_ip))
        if decision.blocked:
            return refused(429, "blocked", decision.retry_after)
        if not decision.allowed:
            _limit_exceeded(self._audit, "connect", client_ip, None)
            verdict = await self._detector.connect_refused(client_ip)
            return refused(429, "connect_rate", verdict.seconds)
        if not self.slots.try_acquire(client_ip):
            _limit_exceeded(self._audit, "connections_per_ip", client_ip, None)
            return refused(429, "connections_per_ip", CAP_RETRY_AFTER)

        release = _SlotRelease(self.slots, client_ip)
        try:
            identity = self._verifier.verify(token)
            blocked = await self._limiter.blocked_for(user_subject(identity.user_id))
        except AuthError as exc:
            release()
            hashed = token_hash(token) if token else None
            self._audit.auth_failure(client_ip=client_ip, reason=exc.reason, token_hash=hashed, user_agent=user_agent)
            return Refuse(403, "unauthorized")  # one auth_failure record, in place of connection_attempt
        except BaseException:
            release()  # cancelled or failed while holding the slot
            raise
        if blocked:
            release()
            return refused(429, "blocked", blocked, identity)
        try:
            active = await self._users(identity.user_id)
        except DirectoryUnavailable:
            release()
            return refused(503, "user_directory_unavailable", USER_DIRECTORY_RETRY_AFTER, identity)
        except BaseException:
            release()
            raise
        if not active:
            release()
            return refused(403, "inactive_user", None, identity)
        self._audit.connection_attempt(client_ip=client_ip, accepted=True, identity=identity, user_agent=user_agent)
        return Admission(identity, client_ip, release)

    def guard(self, admission: Admission) -> SocketGuard:
        """The per-socket limits for an admitted socket."""
        return SocketGuard(admission, self._limiter, self._detector, self._audit, self._limits, self._clock)


class SocketGuard:
    """Join rate, message rate and size, and spam detection for one socket.

    Both checks are checkpoints and cancellable; each blocks on one limiter call (a Redis round
    trip with the shared limiter), plus one more when it blocks the user. Neither raises except
    what the limiter raises.
    """

    __slots__ = (
        "_audit",
        "_client_ip",
        "_clock",
        "_detector",
        "_identity",
        "_joins",
        "_limiter",
        "_limits",
        "_refusals_in_a_row",
    )

    def __init__(
        self,
        admission: Admission,
        limiter: Limiter,
        detector: AbuseDetector,
        audit: AuditLog,
        limits: LimitsConfig,
        clock: Callable[[], float],
    ) -> None:
        self._identity = admission.token
        self._client_ip = admission.client_ip
        self._limiter = limiter
        self._detector = detector
        self._audit = audit
        self._limits = limits
        self._clock = clock
        self._joins = SlidingWindow(limits.join_rate)  # contract §5: joins are limited per socket
        self._refusals_in_a_row = 0  # message-rate refusals since the last accepted message

    async def check_join(self) -> Refusal | None:
        """None: go on with the join. Otherwise refuse, then close: `blocked` when the user is blocked
        (by abuse detection on any socket or node, contract §2), `rate_limit_exceeded` when the join is
        over the rate (which blocks the user)."""
        blocked = await self._limiter.blocked_for(user_subject(self._identity.user_id))
        if blocked:
            return Refusal("blocked", math.ceil(blocked * 1000), CLOSE_POLICY_VIOLATION)
        if self._joins.hit(round(self._clock() * MICROS)).allowed:
            return None
        _limit_exceeded(self._audit, "join", self._client_ip, self._identity)
        verdict = await self._detector.join_refused(self._identity, self._client_ip)
        return Refusal("rate_limit_exceeded", math.ceil(verdict.seconds * 1000), CLOSE_POLICY_VIOLATION)

    async def check_message(self, content: str) -> Refusal | None:
        """None: store and broadcast the message. Every call spends a token, oversize ones included,
        so a flood of oversize messages is rate limited (and audited) like any other. `blocked` (then
        close 1008, contract §5 "spam", §6) when the user is blocked, by this socket or any other."""
        decision = await self._limiter.hit(self._limits.message_rate, user_subject(self._identity.user_id))
        if decision.blocked:
            return Refusal("blocked", decision.retry_after_ms, CLOSE_POLICY_VIOLATION)
        if not decision.allowed:
            self._refusals_in_a_row += 1
            _limit_exceeded(self._audit, "message", self._client_ip, self._identity)
            verdict = await self._detector.message_refused(self._refusals_in_a_row, self._identity, self._client_ip)
            if verdict is not None:
                # contract §5 "spam": blocked, close 1008
                return Refusal("blocked", math.ceil(verdict.seconds * 1000), CLOSE_POLICY_VIOLATION)
            return Refusal("rate_limit_exceeded", decision.retry_after_ms)
        self._refusals_in_a_row = 0
        if content_too_large(content, self._limits.max_content_bytes):
            _limit_exceeded(self._audit, "message_size", self._client_ip, self._identity)
            return Refusal("message_too_large")
        return None


class _SlotRelease:
    """Releases one per-IP slot, once, however many times it is called."""

    __slots__ = ("_client_ip", "_slots")

    def __init__(self, slots: ConnectionSlots, client_ip: str) -> None:
        self._slots: ConnectionSlots | None = slots
        self._client_ip = client_ip

    def __call__(self) -> None:
        if self._slots is not None:
            slots, self._slots = self._slots, None
            slots.release(self._client_ip)


def _limit_exceeded(audit: AuditLog, limit: str, client_ip: str, identity: VerifiedToken | None) -> None:
    audit.limit_exceeded(limit=limit, client_ip=client_ip, identity=identity)
    telemetry.emit(telemetry.LIMIT_EXCEEDED, metadata={"limit": limit})
