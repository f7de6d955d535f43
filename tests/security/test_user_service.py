"""`UserService` against a stand-in HTTP user service on a loopback port.

Time is Trio's `autojump_clock`: cache TTLs, the stale window, the request timeout and the breaker's
30 s all run in virtual time, so `trio.sleep` below moves the clock, it never waits for the server.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import h11
import pytest
import trio
import trio.testing
import trustme

from whispr.observability import telemetry
from whispr.resilience import CircuitBreaker, CircuitOpen, State
from whispr.security.gatekeeper import DirectoryUnavailable
from whispr.security.user_service import UserService

pytestmark = pytest.mark.integration  # loopback sockets


def http(status: int, body: bytes = b"", *, headers: tuple[str, ...] = ()) -> bytes:
    """A raw HTTP/1.1 response with a Content-Length."""
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def answer(active: bool) -> bytes:
    return http(200, json.dumps({"active": active}).encode(), headers=("Content-Type: application/json",))


@dataclass
class Seen:
    target: str
    headers: dict[str, str]


@dataclass
class StandIn:
    """The user service: `users` maps ids to `active`; absent ids get 404. `reply` overrides it
    (None from `reply`: never answer). Every request is recorded in `requests`."""

    users: dict[str, bool] = field(default_factory=dict)
    reply: Callable[[str], bytes | None] | None = None
    delay: float = 0.0  # virtual seconds before answering
    requests: list[Seen] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)  # set at the first request
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def respond(self, target: str) -> bytes | None:
        if self.reply is not None:
            return self.reply(target)
        user_id = unquote(target.removeprefix("/users/"))
        return answer(self.users[user_id]) if user_id in self.users else http(404)

    async def handle(self, stream: trio.abc.Stream) -> None:
        try:
            connection = h11.Connection(h11.SERVER)
            event = connection.next_event()
            while event is h11.NEED_DATA:
                connection.receive_data(bytes(await stream.receive_some(4096)))
                event = connection.next_event()
            if not isinstance(event, h11.Request):
                return
            headers = {name.decode().lower(): value.decode() for name, value in event.headers}
            self.requests.append(Seen(event.target.decode(), headers))
            self.arrived.set()
            if self.delay:
                await trio.sleep(self.delay)
            response = self.respond(event.target.decode())
            if response is None:
                await trio.sleep_forever()
            else:
                await stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client gave up (timeout, cancellation) or failed its TLS handshake
        finally:
            await trio.aclose_forcefully(stream)


@pytest.fixture
async def server(nursery: trio.Nursery) -> StandIn:
    standin = StandIn()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, standin.handle, 0, host="127.0.0.1"))
    standin.port = listeners[0].socket.getsockname()[1]
    return standin


@pytest.fixture
def calls() -> Iterator[list[dict[str, object]]]:
    """Metadata of every DEPENDENCY_CALL emitted during the test."""
    seen: list[dict[str, object]] = []
    telemetry.attach("user-service-tests", [telemetry.DEPENDENCY_CALL], lambda _e, _m, md: seen.append(dict(md)))
    yield seen
    telemetry.detach("user-service-tests")


async def unavailable(service: UserService, user_id: str) -> BaseException | None:
    """Look `user_id` up, expecting DirectoryUnavailable; return its cause."""
    with pytest.raises(DirectoryUnavailable) as caught:
        await service.user_active(user_id)
    return caught.value.__cause__


# -- answers ----------------------------------------------------------------------------------


async def test_active_inactive_and_unknown(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.users = {"alice": True, "bob": False}
    service = UserService(server.url)
    assert await service.user_active("alice") is True
    assert await service.user_active("bob") is False
    assert await service.user_active("carol") is False  # 404: unknown is not active
    assert [seen.target for seen in server.requests] == ["/users/alice", "/users/bob", "/users/carol"]
    assert service.breaker.state is State.CLOSED


async def test_request_line_and_headers(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.reply = lambda _target: answer(True)
    service = UserService(server.url + "/api/v1/")
    await service.user_active("a/b c?#%é")
    await service.user_active("..")
    await service.user_active(".")
    assert [seen.target for seen in server.requests] == [
        "/api/v1/users/a%2Fb%20c%3F%23%25%C3%A9",
        "/api/v1/users/%2E%2E",
        "/api/v1/users/%2E",
    ]
    headers = server.requests[0].headers
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["connection"] == "close"
    assert headers["accept"] == "application/json"


async def test_an_empty_user_id_is_not_active_and_costs_no_request(server: StandIn) -> None:
    assert await UserService(server.url).user_active("") is False
    assert server.requests == []


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"act\r\na\r\nive": true\r\n1\r\n}\r\n0\r\n\r\n',
            id="chunked",
        ),
        pytest.param(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"active": true}', id="read-to-eof"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(True), id="after-100-continue"),
        pytest.param(http(200, b'{"active": true, "id": "alice", "extra": [1, 2]}'), id="extra-fields"),
        pytest.param(http(200, b" " * 60_000 + b'{"active": true}'), id="60k-body-under-the-cap"),
    ],
)
async def test_well_formed_responses_are_read(server: StandIn, autojump_clock: trio.abc.Clock, response: bytes) -> None:
    server.reply = lambda _target: response
    assert await UserService(server.url).user_active("alice") is True


# -- cache ------------------------------------------------------------------------------------


async def test_a_positive_answer_is_cached_for_cache_ttl(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.users = {"alice": True}
    service = UserService(server.url, cache_ttl=30.0)
    assert await service.user_active("alice") is True
    await trio.sleep(29.0)
    assert await service.user_active("alice") is True
    assert len(server.requests) == 1
    await trio.sleep(1.0)
    server.users["alice"] = False
    assert await service.user_active("alice") is False  # expired: asked again
    assert len(server.requests) == 2


@pytest.mark.parametrize("users", [{"bob": False}, {}], ids=["inactive", "unknown"])
async def test_a_negative_answer_is_cached_for_negative_cache_ttl(
    server: StandIn, autojump_clock: trio.abc.Clock, users: dict[str, bool]
) -> None:
    server.users = users
    service = UserService(server.url, negative_cache_ttl=5.0)
    assert await service.user_active("bob") is False
    await trio.sleep(4.0)
    assert await service.user_active("bob") is False
    assert len(server.requests) == 1
    await trio.sleep(1.0)
    server.users = {"bob": True}
    assert await service.user_active("bob") is True  # activated: seen once the negative entry expired
    assert len(server.requests) == 2


async def test_the_cache_is_bounded_least_recently_used_first(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.users = {"a": True, "b": True, "c": True}
    service = UserService(server.url, max_entries=2)
    for user_id in ("a", "b", "a", "c"):  # c evicts b, the least recently used
        await service.user_active(user_id)
    assert len(server.requests) == 3
    await service.user_active("a")
    assert len(server.requests) == 3
    await service.user_active("b")
    assert [seen.target for seen in server.requests][-1] == "/users/b"
    assert len(server.requests) == 4


async def test_forget_drops_a_cached_answer(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.users = {"alice": True}
    service = UserService(server.url)
    await service.user_active("alice")
    server.users["alice"] = False
    service.forget("alice")
    assert await service.user_active("alice") is False
    assert len(server.requests) == 2


# -- single flight ----------------------------------------------------------------------------


async def test_concurrent_lookups_of_one_user_share_one_request(
    server: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    server.users = {"alice": True}
    server.delay = 0.5  # every lookup starts before the answer comes
    service = UserService(server.url)
    results: list[bool] = []

    async def lookup() -> None:
        results.append(await service.user_active("alice"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(lookup)
    assert results == [True] * 10
    assert len(server.requests) == 1


async def test_concurrent_lookups_share_a_failure(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.reply = lambda _target: http(500)
    server.delay = 0.5
    service = UserService(server.url)
    causes: list[BaseException | None] = []

    async def lookup() -> None:
        causes.append(await unavailable(service, "alice"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(lookup)
    assert len(causes) == 10
    assert len(server.requests) == 1
    assert service.breaker.statistics().consecutive_failures == 1  # one request, one failure


async def test_a_cancelled_requester_hands_the_request_to_a_waiter(
    server: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    server.users = {"alice": True}
    server.delay = 0.5
    service = UserService(server.url)
    results: list[bool] = []

    async def lookup() -> None:
        results.append(await service.user_active("alice"))

    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def requester() -> None:
            with first:
                await lookup()

        nursery.start_soon(requester)
        await server.arrived.wait()  # the requester's request is at the server
        for _ in range(3):
            nursery.start_soon(lookup)
        await trio.testing.wait_all_tasks_blocked()  # the waiters wait on the requester's flight
        first.cancel()
    assert first.cancelled_caught
    assert results == [True] * 3
    assert len(server.requests) == 2  # the abandoned request, and one made by a waiter


# -- failures and the breaker -----------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(http(500), id="500"),
        pytest.param(http(503, headers=("Retry-After: 1",)), id="503"),
        pytest.param(http(401), id="401"),
        pytest.param(http(302, headers=("Location: http://elsewhere/",)), id="redirect"),
        pytest.param(http(204), id="204"),
        pytest.param(http(200, b"not json"), id="not-json"),
        pytest.param(http(200, b"\xff\xfe\x00"), id="not-utf8"),
        pytest.param(http(200, b""), id="empty-body"),
        pytest.param(http(200, b"[true]"), id="not-an-object"),
        pytest.param(http(200, b"{}"), id="no-active"),
        pytest.param(http(200, b'{"active": "yes"}'), id="active-a-string"),
        pytest.param(http(200, b'{"active": 1}'), id="active-an-int"),
        pytest.param(http(200, b'{"active": null}'), id="active-null"),
        pytest.param(b"", id="closed-without-a-response"),
        pytest.param(b"garbage\r\n\r\n", id="garbage-status-line"),
        pytest.param(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"active"', id="truncated-body"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n", id="truncated-head"),
        pytest.param(http(200, b" " * 70_000 + b'{"active": true}'), id="body-over-64k"),
        pytest.param(http(200, b'{"active": true}', headers=("X-Pad: " + "a" * 70_000,)), id="head-over-64k"),
    ],
)
async def test_a_bad_response_is_a_breaker_failure(
    server: StandIn, autojump_clock: trio.abc.Clock, response: bytes, calls: list[dict[str, object]]
) -> None:
    server.reply = lambda _target: response
    service = UserService(server.url)
    await unavailable(service, "alice")
    assert service.breaker.statistics().consecutive_failures == 1
    assert calls == [{"dependency": "user_service", "operation": "get_user", "outcome": "error"}]


async def test_a_service_that_does_not_answer_times_out(
    server: StandIn, autojump_clock: trio.abc.Clock, calls: list[dict[str, object]]
) -> None:
    server.reply = lambda _target: None  # never answers
    service = UserService(server.url, timeout=1.0)
    cause = await unavailable(service, "alice")
    assert isinstance(cause, trio.TooSlowError)
    assert service.breaker.statistics().consecutive_failures == 1
    assert calls == [{"dependency": "user_service", "operation": "get_user", "outcome": "timeout"}]


async def test_a_refused_connection_is_a_breaker_failure(autojump_clock: trio.abc.Clock) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there now
    service = UserService(f"http://127.0.0.1:{port}")
    assert isinstance(await unavailable(service, "alice"), OSError)
    assert service.breaker.statistics().consecutive_failures == 1


async def test_breaker_opens_after_5_failures_then_a_trial_closes_it(
    server: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    states: list[str] = []
    telemetry.attach(
        "user-service-states", [telemetry.CIRCUIT_STATE], lambda _e, _m, md: states.append(str(md["state"]))
    )
    try:
        server.reply = lambda _target: http(500)
        service = UserService(server.url)
        for _ in range(5):
            await unavailable(service, "alice")
        assert len(server.requests) == 5
        assert states == ["open"]

        # open: fail fast, no request
        assert isinstance(await unavailable(service, "alice"), CircuitOpen)
        await trio.sleep(29.0)
        assert isinstance(await unavailable(service, "alice"), CircuitOpen)
        assert len(server.requests) == 5

        # 30 s after opening: trials reach the service; 3 successful trials close the breaker
        await trio.sleep(1.0)
        server.reply = None
        server.users = {"alice": True, "bob": False}
        assert await service.user_active("alice") is True
        assert states == ["open", "half_open"]
        assert await service.user_active("bob") is False
        assert await service.user_active("carol") is False  # 404 is an answer: a successful trial
        assert states == ["open", "half_open", "closed"]
        assert service.breaker.state is State.CLOSED
        assert len(server.requests) == 8
    finally:
        telemetry.detach("user-service-states")


async def test_a_given_breaker_is_used(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.reply = lambda _target: http(500)
    breaker = CircuitBreaker("user_service", call_timeout=2.0, failure_threshold=1)
    service = UserService(server.url, breaker=breaker)
    await unavailable(service, "alice")
    assert breaker.state is State.OPEN
    assert isinstance(await unavailable(service, "alice"), CircuitOpen)


# -- graceful degradation ---------------------------------------------------------------------


async def test_stale_positives_are_served_while_the_service_fails(
    server: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    server.users = {"alice": True, "bob": True}
    service = UserService(server.url, cache_ttl=30.0, stale_ttl=300.0)
    assert await service.user_active("alice") is True  # t=0: alice cached
    server.reply = lambda _target: http(500)
    await trio.sleep(31.0)

    assert await service.user_active("alice") is True  # expired, asked, failed: served stale
    assert len(server.requests) == 2
    for _ in range(4):
        await unavailable(service, "bob")  # never seen: nothing to fall back on
    assert service.breaker.state is State.OPEN

    assert await service.user_active("alice") is True  # open breaker: no request, served stale
    assert isinstance(await unavailable(service, "bob"), CircuitOpen)
    assert len(server.requests) == 6

    await trio.sleep(300.0 - 31.0)  # alice's answer is now 300 s old: too old to serve
    await unavailable(service, "alice")


async def test_stale_negatives_are_not_served(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.users = {"bob": False}
    service = UserService(server.url, negative_cache_ttl=5.0)
    assert await service.user_active("bob") is False
    server.reply = lambda _target: http(500)
    await trio.sleep(5.0)
    await unavailable(service, "bob")  # "cannot tell", not "inactive"


async def test_stale_serving_can_be_disabled(server: StandIn, autojump_clock: trio.abc.Clock) -> None:
    server.users = {"alice": True}
    service = UserService(server.url, cache_ttl=30.0, stale_ttl=0.0)
    await service.user_active("alice")
    server.reply = lambda _target: http(500)
    await trio.sleep(30.0)
    await unavailable(service, "alice")


# -- https ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def serve_tls(nursery: trio.Nursery, standin: StandIn, ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    listeners = await nursery.start(
        functools.partial(
            trio.serve_ssl_over_tcp, standin.handle, 0, server_context, host="127.0.0.1", https_compatible=True
        )
    )
    standin.port = listeners[0].transport_listener.socket.getsockname()[1]


async def test_https_with_a_trusted_certificate(
    nursery: trio.Nursery, ca: trustme.CA, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(users={"alice": True})
    await serve_tls(nursery, standin, ca)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    service = UserService(f"https://127.0.0.1:{standin.port}", ssl_context=client_context)
    assert await service.user_active("alice") is True
    assert standin.requests[0].headers["host"] == f"127.0.0.1:{standin.port}"


async def test_https_refuses_an_untrusted_certificate(
    nursery: trio.Nursery, ca: trustme.CA, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(users={"alice": True})
    await serve_tls(nursery, standin, ca)
    service = UserService(f"https://127.0.0.1:{standin.port}")  # system trust store: not our CA
    await unavailable(service, "alice")
    assert standin.requests == []
    assert service.breaker.statistics().consecutive_failures == 1


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://users.internal",
        "users.internal:8080",
        "http://",
        "http://users.internal/?token=x",
        "http://users.internal/#frag",
        "http://user:secret@users.internal",
        "http://users.internal:99999",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        UserService(url)


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0.0}, {"cache_ttl": -1.0}, {"negative_cache_ttl": -1.0}, {"stale_ttl": -1.0}, {"max_entries": 0}],
)
def test_bad_numbers_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        UserService("http://users.internal", **options)  # type: ignore[arg-type]


def test_host_header_and_default_ports() -> None:
    assert UserService("http://users.internal")._host_header == "users.internal"
    assert UserService("https://users.internal:443/")._host_header == "users.internal"
    assert UserService("https://users.internal:8443")._host_header == "users.internal:8443"
    assert UserService("http://[::1]:8080")._host_header == "[::1]:8080"
