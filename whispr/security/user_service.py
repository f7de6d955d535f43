"""`UserService`: the user directory as an external HTTP service, behind a circuit breaker and a short cache.

Contract §1: at connect time the user must be active in the user directory. With a user service
configured, `UserService.user_active` is the `users=` callable of `Gatekeeper`:

    GET {base_url}/users/{user_id, percent-encoded as one path segment}
    200 {"active": true|false}  -> that value
    404                         -> False (an unknown user is not active)
    anything else               -> a failure: `DirectoryUnavailable` (the upgrade gets 503 + Retry-After)

Failures are: any other status (redirects included), a body that is not a JSON object with a boolean
`active`, a response over `max_response_bytes`, a malformed HTTP response, connect/TLS/DNS errors
and the timeout. Each one counts against the circuit breaker (`CircuitBreaker("user_service")`,
contract §5: 5 failures -> open 30 s -> 3 half-open trials); while the breaker is open, lookups fail
fast without a request. Every request that ran emits DEPENDENCY_CALL {dependency: "user_service",
operation: "get_user", outcome} (from the breaker).

The wire: one HTTP/1.1 GET per lookup with `Connection: close`, over `trio.open_tcp_stream` (plus
`trio.SSLStream` for https, verified with `ssl.create_default_context()` unless a context is given).
Responses are parsed by h11 (a pinned dependency already: trio-websocket/wsproto use it), which is
strict and handles Content-Length, chunked and read-to-EOF bodies; the whole response (head and
body) is capped at `max_response_bytes` (64 KiB). No connection pooling: the cache keeps the request rate low.

Cache (all ages by `trio.current_time()`, measured from when the request started):
- a positive answer is fresh for `cache_ttl` (30 s), a negative one (inactive or unknown) for
  `negative_cache_ttl` (5 s); fresh answers are served without a request.
- graceful degradation: when a lookup fails (error, timeout or open breaker) and the user had a
  positive answer younger than `stale_ttl` (300 s), the lookup answers True. Active users keep
  connecting through a user-service outage of up to `stale_ttl`; the cost is that a user
  deactivated during the outage can still connect until then. Negative answers are never served
  stale: "cannot tell" (503, the client retries) is better than refusing a user who may have just
  been activated.
- bounded: at most `max_entries` users (100k), least recently used evicted first.

Single flight: concurrent lookups of the same user that miss the cache share one request. If the
task making the request is cancelled, one of the waiting tasks makes a new request.

Not thread-safe: one instance per Trio run (per node), like the breaker.
"""

from __future__ import annotations

import json
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import h11
import trio

from whispr.resilience import CircuitBreaker, CircuitOpen
from whispr.security.gatekeeper import DirectoryUnavailable

__all__ = ["UserService", "UserServiceError"]

MAX_RESPONSE_BYTES = 64 * 1024
_RECEIVE_CHUNK = 16 * 1024


class UserServiceError(Exception):
    """The user service answered, but not with a usable answer (bad status or body). A breaker failure."""


@dataclass(slots=True)
class _Entry:
    active: bool
    fetched_at: float  # trio.current_time() when the request that produced it started


class _Flight:
    """One request in progress, shared by every concurrent lookup of the same user."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: bool | None = None  # set on an answer (fresh, or stale after a failure)
        self.error: Exception | None = None  # set on a failure with nothing to fall back on
        # both None once `done` is set: the requesting task was cancelled; a waiter retries


class UserService:
    """Client of the external user service: `await user_active(user_id)` for `Gatekeeper(users=...)`.

    Args:
        base_url: `http://host[:port][/prefix]` or `https://...`; lookups GET `{base_url}/users/{id}`.
        timeout: seconds one request may take, connect to last byte; it becomes the `call_timeout`
            of the breaker built here. A given `breaker` uses its own `call_timeout` instead.
        cache_ttl: seconds a positive answer is served from the cache.
        negative_cache_ttl: seconds an inactive/unknown answer is served from the cache.
        stale_ttl: seconds a positive answer may still be served while the service is failing.
            0 disables stale serving.
        max_entries: cache bound (LRU).
        breaker: the circuit breaker; default `CircuitBreaker("user_service", call_timeout=timeout)`
            with the contract's 5 / 30 s / 3. Its `failure_types` should stay `(Exception,)`.
        ssl_context: for https; default `ssl.create_default_context()`.
        max_response_bytes: cap on the whole response, head and body, as received.

    Raises:
        ValueError: a base_url that is not http(s)://host..., or a query, fragment or credentials in
            it; a non-positive timeout, negative TTL, or `max_entries` < 1.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 1.0,
        cache_ttl: float = 30.0,
        negative_cache_ttl: float = 5.0,
        stale_ttl: float = 300.0,
        max_entries: int = 100_000,
        breaker: CircuitBreaker | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        for name, value in (
            ("cache_ttl", cache_ttl),
            ("negative_cache_ttl", negative_cache_ttl),
            ("stale_ttl", stale_ttl),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries!r}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be at least 1, got {max_response_bytes!r}")
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"user service URL must be http(s)://host[:port][/path], got {base_url!r}")
        if url.query or url.fragment or url.username is not None or url.password is not None:
            raise ValueError("user service URL must not carry a query, a fragment or credentials")
        try:
            port = url.port
        except ValueError as exc:
            raise ValueError(f"user service URL has a bad port: {base_url!r}") from exc
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = port if port is not None else (443 if self._https else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = 443 if self._https else 80
        self._host_header = host if self._port == default_port else f"{host}:{self._port}"
        self._path_prefix = url.path.rstrip("/") + "/users/"
        self._ssl_context: ssl.SSLContext | None = None
        if self._https:
            self._ssl_context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.breaker = breaker if breaker is not None else CircuitBreaker("user_service", call_timeout=timeout)
        self._cache_ttl = cache_ttl
        self._negative_cache_ttl = negative_cache_ttl
        self._stale_ttl = stale_ttl
        self._max_entries = max_entries
        self._max_response_bytes = max_response_bytes
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._flights: dict[str, _Flight] = {}

    async def user_active(self, user_id: str) -> bool:
        """Whether `user_id` is active in the user service (cached; see the module docstring).

        Blocking: not on a fresh cache hit (one checkpoint); else until the shared request ends,
        at most the breaker's `call_timeout`. Cancellable: yes; cancelling the task that makes a
        request hands the request over to another waiting lookup.

        Raises:
            DirectoryUnavailable: the service failed (or its breaker is open) and there is no
                positive answer younger than `stale_ttl` to fall back on.
        """
        await trio.lowlevel.checkpoint()
        if not user_id:
            return False  # no such user; not worth a request (and `/users/` is not a user)
        while True:
            entry = self._fresh(user_id, trio.current_time())
            if entry is not None:
                return entry.active
            flight = self._flights.get(user_id)
            if flight is None:
                return await self._lead(user_id)
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
            if flight.error is not None:
                raise DirectoryUnavailable(_describe(flight.error)) from flight.error
            # the requesting task was cancelled: look again (and maybe make the request)

    def forget(self, user_id: str) -> None:
        """Drop `user_id` from the cache, e.g. on a deactivation event. In-flight lookups are not affected."""
        self._cache.pop(user_id, None)

    # -- cache --------------------------------------------------------------------------------

    def _fresh(self, user_id: str, now: float) -> _Entry | None:
        entry = self._cache.get(user_id)
        if entry is None:
            return None
        age = now - entry.fetched_at
        if age < (self._cache_ttl if entry.active else self._negative_cache_ttl):
            self._cache.move_to_end(user_id)
            return entry
        if not entry.active or age >= self._stale_ttl:
            del self._cache[user_id]  # of no further use
        return None

    def _stale(self, user_id: str, now: float) -> bool:
        entry = self._cache.get(user_id)
        return entry is not None and entry.active and now - entry.fetched_at < self._stale_ttl

    def _store(self, user_id: str, entry: _Entry) -> None:
        self._cache[user_id] = entry
        self._cache.move_to_end(user_id)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    # -- the request ----------------------------------------------------------------------------

    async def _lead(self, user_id: str) -> bool:
        """Make the request for `user_id` on behalf of every lookup waiting on it."""
        flight = _Flight()
        self._flights[user_id] = flight  # no checkpoint since the cache and flight checks
        try:
            started = trio.current_time()
            try:
                active = await self.breaker.call(self.get_user, user_id)
            except Exception as exc:
                if self._stale(user_id, trio.current_time()):
                    flight.result = True
                    return True
                flight.error = exc
                raise DirectoryUnavailable(_describe(exc)) from exc
            self._store(user_id, _Entry(active, started))
            flight.result = active
            return active
        finally:
            del self._flights[user_id]
            flight.done.set()

    async def get_user(self, user_id: str) -> bool:
        """One uncached request, without the breaker: True/False on 200 or 404, else raises.

        Blocking: for as long as the service takes (the breaker's `call_timeout` bounds it).
        Raises: UserServiceError, OSError (connect, DNS, TLS), trio.BrokenResourceError,
        h11.ProtocolError; all are breaker failures.
        """
        status, body = await self._get(self._path_prefix + _path_segment(user_id))
        if status == 404:
            return False
        if status != 200:
            raise UserServiceError(f"user service answered HTTP {status}")
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise UserServiceError("user service answered 200 with a body that is not JSON") from exc
        active = document.get("active") if isinstance(document, dict) else None
        if not isinstance(active, bool):
            raise UserServiceError('user service answered 200 without a boolean "active"')
        return active

    async def _get(self, target: str) -> tuple[int, bytes]:
        """GET `target` on a fresh connection; return (status, body). Closes the connection."""
        stream: trio.abc.Stream = await trio.open_tcp_stream(self._host, self._port)
        try:
            if self._ssl_context is not None:
                tls = trio.SSLStream(stream, self._ssl_context, server_hostname=self._host, https_compatible=True)
                stream = tls
                await tls.do_handshake()
            connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_response_bytes)
            request = h11.Request(
                method="GET",
                target=target,
                headers=[
                    ("Host", self._host_header),
                    ("Accept", "application/json"),
                    ("User-Agent", "whispr"),
                    ("Connection", "close"),
                ],
            )
            await stream.send_all(connection.send(request) + (connection.send(h11.EndOfMessage()) or b""))
            status: int | None = None
            body = bytearray()
            received = 0
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(_RECEIVE_CHUNK)  # b"" at EOF
                    received += len(data)
                    if received > self._max_response_bytes:
                        raise UserServiceError(f"user service response over {self._max_response_bytes} bytes")
                    connection.receive_data(bytes(data))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    if status is None:  # cannot happen: h11 gives the Response first
                        raise UserServiceError("user service response ended before its status line")
                    return status, bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    raise UserServiceError("user service closed the connection without a response")
                # h11.InformationalResponse (1xx): wait for the final response
        finally:
            await trio.aclose_forcefully(stream)


def _path_segment(user_id: str) -> str:
    """`user_id` as one path segment: every reserved character percent-encoded, and the dot
    segments `.` and `..` encoded too, so no id can walk out of `/users/`."""
    segment = quote(user_id, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def _describe(exc: Exception) -> str:
    """A short reason for DirectoryUnavailable (no user id: logs must not need it)."""
    if isinstance(exc, CircuitOpen):
        return f"user service circuit open; retry after {exc.retry_after:.1f}s"
    if isinstance(exc, trio.TooSlowError):
        return "user service timed out"
    if isinstance(exc, UserServiceError):
        return str(exc)
    return f"user service unreachable: {type(exc).__name__}: {exc}"
