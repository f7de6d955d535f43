"""Security building blocks the socket layer calls: at the upgrade, at each join and at each push.

- `tokens`: JWT verification (`TokenVerifier`, `VerifiedToken`, `AuthError`) and `mint_token` for dev tokens.
- `origin`: the exact-match Origin allow-list (`OriginPolicy`).
- `client_ip`: the client IP behind trusted proxies (`ClientIpResolver`).
- `limits`: per-IP connection slots, rate limits (`Limiter`: `LocalLimiter`, `FallbackLimiter`; the
  Redis backend is `whispr.adapters.redis_limits.RedisLimiter`) and the UTF-8 content size check.
- `abuse`: detectors that turn limit refusals into `blocked` verdicts (`AbuseDetector`).
- `audit`: the audit trail on logger `whispr.audit` (`AuditLog`).
- `gatekeeper`: the call points: `Gatekeeper.admit` at the upgrade, `SocketGuard` per socket.
"""
