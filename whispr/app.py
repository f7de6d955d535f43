"""One whispr node: its supervision tree, built from `Settings` (architecture.md "The supervision tree").

Root tree, `rest_for_one` (a dependency's restart restarts everything that depends on it):

    store → pubsub → bridge → presence → cluster → delivery → offline → security → loop_lag → endpoint

`bridge` (cross-node pub/sub) and `cluster` (membership gossiped through a Redis Stream) run only
when `redis_url` is set; the embedded default is one node.

Each child registers what it serves on the `Node` before `task_status.started()`, and later
children read it when they (re)start, so a restarted store is picked up by the pub/sub, presence
and endpoint children that the strategy restarts after it. The endpoint is last: nothing is
accepted before everything it needs is up, and on shutdown it stops first.

Sockets are children of the endpoint (one task each, temporary, behind their own exception
boundary: nothing a socket does reaches the tree); channels run inside their socket's task with
one_for_one / temporary semantics (`whispr.gateway.socket`).

`serve()` opens the trio-asyncio bridge first (dependencies.md §2 sharp edge b: asyncio libraries
work only inside it), then runs the tree until SIGTERM/SIGINT and stops it within the grace.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import supervisors
from whispr.adapters import migrate as migrate_store
from whispr.adapters import open_store
from whispr.adapters.aio import open_bridge
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_limits import RedisLimiter
from whispr.adapters.redis_pubsub import open_redis_bus
from whispr.api.routes import http_routes
from whispr.api.service import ServiceApi
from whispr.channels.user import make_router
from whispr.cluster import ClusterManager
from whispr.cluster.health import HealthThresholds, OverloadGuard
from whispr.config import Settings
from whispr.delivery.deps import Deps, Guard
from whispr.delivery.store import MessageStore, StoreUnavailable
from whispr.gateway.drain import Drainer, drain_config
from whispr.gateway.endpoint import Endpoint, EndpointConfig
from whispr.gateway.http import HttpHandler, HttpRequest, HttpResponse
from whispr.gateway.socket import PhoenixSocket
from whispr.gateway.socket_connect import Admitted, Authenticate, make_connect
from whispr.gateway.transport import Refuse, UpgradeRequest
from whispr.gateway.websocket import WebSocketLimits
from whispr.observability.health import Check, CheckResult, Readiness
from whispr.observability.logs import attach_telemetry_logging, configure_logging
from whispr.observability.loop_lag import measure_loop_lag
from whispr.observability.metrics import Metrics
from whispr.observability.supervision import report_to_telemetry
from whispr.presence import PresenceReplica, PresenceTracker
from whispr.protocol import Identity
from whispr.pubsub.cluster import ClusterBridge
from whispr.pubsub.local import PubSub
from whispr.security.abuse import AbuseDetector
from whispr.security.audit import AuditLog
from whispr.security.client_ip import ClientIpResolver
from whispr.security.expiry import CLOSE_TOKEN_EXPIRED, ExpiryWatch
from whispr.security.gatekeeper import Admission, DirectoryUnavailable, Gatekeeper, SocketGuard
from whispr.security.limits import PRIMARY_IN_FLIGHT, FallbackLimiter, Limiter, LimitsConfig, LocalLimiter, Rate
from whispr.security.origin import OriginPolicy
from whispr.security.tokens import TokenConfig, TokenVerifier, mint_token
from whispr.security.user_service import UserService

_log = logging.getLogger("whispr.app")

PURGE_INTERVAL = 600.0  # seconds between offline-retention purges
GC_YOUNG_THRESHOLD = 10_000  # container allocations between young collections (`settle_heap`)


@dataclass
class Node:
    """The services of one node, registered by the tree's children as they start.

    A field is None until its child has started; the `rest_for_one` order guarantees that a
    child only reads fields of children before it.
    """

    settings: Settings
    metrics: Metrics
    store: MessageStore | None = None
    pubsub: PubSub | None = None
    presence: PresenceTracker | None = None
    replica: PresenceReplica | None = None  # with Redis: the tracker holds every node's presence
    bridge: ClusterBridge | None = None
    cluster: ClusterManager | None = None
    deps: Deps | None = None
    gatekeeper: Gatekeeper | None = None
    expiry: ExpiryWatch | None = None
    # socket id -> the guard of that device's newest socket (the channels' `Deps.guard`)
    guards: dict[str, SocketGuard] = field(default_factory=dict)
    endpoint: Endpoint | None = None
    address: tuple[str, int] | None = None
    drainer: Drainer | None = None  # the endpoint's socket tracker; drains on SIGTERM (whispr.gateway.drain)
    reuse_port: bool = False  # SO_REUSEPORT: `whispr serve --workers N` runs N nodes on one port


def token_config(settings: Settings) -> TokenConfig:
    """The JWT settings of `settings` (contract.md §1: HS256 with a 32+ byte secret, or public keys)."""
    common: dict[str, Any] = {"issuer": settings.jwt_issuer or None, "audience": settings.jwt_audience or None}
    algorithm = settings.jwt_algorithm
    if algorithm == "HS256":
        return TokenConfig(algorithm="HS256", secret=settings.jwt_secret.encode(), **common)
    path = Path(settings.jwt_public_keys)
    if path.suffix == ".json":
        return TokenConfig(algorithm=algorithm, jwks_path=path, **common)  # type: ignore[arg-type]
    return TokenConfig(algorithm=algorithm, public_key_pem=path.read_bytes(), **common)  # type: ignore[arg-type]


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context from the configured certificate and key, or None for plain ws."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def _store_child(node: Node, *, task_status: trio.TaskStatus[MessageStore]) -> None:
    async with open_store(node.settings.resolved_store_url) as store:
        node.store = store
        task_status.started(store)
        await trio.sleep_forever()


async def _pubsub_child(node: Node, *, task_status: trio.TaskStatus[PubSub]) -> None:
    node.pubsub = PubSub()
    task_status.started(node.pubsub)
    await trio.sleep_forever()


async def _bridge_child(node: Node, *, task_status: trio.TaskStatus[ClusterBridge]) -> None:
    """Broadcasts and commits to and from the other nodes through Redis (`whispr.pubsub.cluster`)."""
    pubsub = _needs(node.pubsub, "pubsub")
    async with open_redis_bus(node.settings.redis_url) as bus:
        node.bridge = ClusterBridge(pubsub, bus, node_id=node.settings.node_id)
        await node.bridge.run(task_status=task_status)


async def _presence_child(node: Node, *, task_status: trio.TaskStatus[PresenceTracker]) -> None:
    """The tracker and, with Redis, its replica (`whispr.presence.replication`): every node holds
    the whole cluster's presence and broadcasts its diffs to its own subscribers only."""
    pubsub = _needs(node.pubsub, "pubsub")

    def broadcast(topic: str, event: str, payload: dict[str, Any]) -> None:
        pubsub.broadcast_local(topic, event, payload, droppable=True)  # every node computes its own diffs

    node.presence = PresenceTracker(broadcast, node=node.settings.node_id)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.presence.run)
        if node.bridge is not None:
            node.replica = PresenceReplica(node.presence, node.bridge.publish_presence, node=node.settings.node_id)
            await nursery.start(node.replica.run)
            node.bridge.attach_presence(node.replica)
        try:
            task_status.started(node.presence)
            await trio.sleep_forever()
        finally:
            if node.bridge is not None:
                node.bridge.attach_presence(None)


async def _offline_child(node: Node, *, task_status: trio.TaskStatus[None]) -> None:
    """Drops inbox entries past the retention window (contract.md §4.3), every PURGE_INTERVAL."""
    store = _needs(node.store, "store")
    task_status.started()
    while True:
        await trio.sleep(PURGE_INTERVAL)
        try:
            purged = await store.purge_expired()
        except StoreUnavailable:
            _log.warning("offline purge skipped: store unavailable")
            continue
        if purged:
            _log.info("offline purge removed %d expired inbox entries", purged)


async def _cluster_child(node: Node, *, task_status: trio.TaskStatus[ClusterManager]) -> None:
    """Node membership over Redis Streams (`whispr.cluster`); its health is a readiness check."""
    node.cluster = ClusterManager(node.settings.redis_url, node.settings.node_id)
    replica = _needs(node.replica, "presence replica")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replica.follow, node.cluster.subscribe())  # a down node's presences go
        await node.cluster.run(task_status=task_status)
        nursery.cancel_scope.cancel()


async def _delivery_child(node: Node, *, task_status: trio.TaskStatus[Deps]) -> None:
    """The messaging services over the store and presence (`whispr.delivery.deps.Deps`), and live delivery."""
    store = _needs(node.store, "store")
    presence = _needs(node.presence, "presence")

    def guard(identity: Identity) -> Guard:
        return node.guards[identity.socket_id]

    node.deps = Deps.build(store, presence, guard)
    if node.bridge is not None:
        node.bridge.attach_live(node.deps.live)  # commits reach, and come from, the other nodes
        node.bridge.attach_connections(node.deps.connections)  # so do disconnects
    async with trio.open_nursery() as nursery:
        await nursery.start(node.deps.live.run)
        task_status.started(node.deps)


async def _security_child(node: Node, *, task_status: trio.TaskStatus[Gatekeeper]) -> None:
    """The gatekeeper (origin, client IP, limits, JWT, abuse, audit) and the token-expiry watch.

    With Redis, rate limits and blocks are one budget across all nodes (contract.md §5), with each
    node's local limiter standing in while Redis fails (reliability.md S11).
    """
    async with contextlib.AsyncExitStack() as stack:
        local = LocalLimiter()
        limiter: Limiter = local
        if node.settings.redis_url:
            client = await stack.enter_async_context(open_redis(node.settings.redis_url))
            shared = RedisLimiter(client)
            await shared.warm_up(PRIMARY_IN_FLIGHT)  # before the endpoint listens (reliability.md E2)
            limiter = FallbackLimiter(shared, local)
        audit = AuditLog()
        settings = node.settings
        store = _needs(node.store, "store")

        async def user_active(user_id: str) -> bool:
            try:
                return bool(await store.user_active(user_id))
            except StoreUnavailable as exc:
                raise DirectoryUnavailable(str(exc)) from exc

        users = user_active  # the store's users table, or the external user service (contract.md §1)
        if node.settings.user_service_url:
            users = UserService(node.settings.user_service_url).user_active

        node.gatekeeper = Gatekeeper(
            verifier=TokenVerifier(token_config(settings)),
            origins=OriginPolicy(settings.allowed_origins, dev=settings.dev),
            client_ips=ClientIpResolver(settings.trusted_proxies),
            limiter=limiter,
            detector=AbuseDetector(limiter, audit),
            audit=audit,
            limits=limits_config(settings),
            users=users,
        )
        node.expiry = ExpiryWatch()
        async with trio.open_nursery() as nursery:
            await nursery.start(node.expiry.run)
            task_status.started(node.gatekeeper)


class _Registration:
    """What one admitted connection registered on the node, undone exactly once when it is gone."""

    __slots__ = ("_admission", "_cancel_expiry", "_guard", "_leeway", "_node", "_socket")

    def __init__(self, node: Node, admission: Admission, guard: SocketGuard, leeway: float) -> None:
        self._node = node
        self._admission = admission
        self._guard = guard
        self._leeway = leeway  # the token verification's, in seconds: the socket closes at exp + leeway
        self._socket: PhoenixSocket | None = None
        self._cancel_expiry: Callable[[], None] | None = None

    def opened(self, socket: PhoenixSocket) -> None:
        """Register the socket by socket id (replacing an older one of the device) and watch its token."""
        node, deps, expiry = self._node, _needs(self._node.deps, "delivery"), _needs(self._node.expiry, "security")
        self._socket = socket
        node.guards[socket.identity.socket_id] = self._guard
        deps.connections.add(socket)
        self._cancel_expiry = expiry.watch(self._admission.token.expires_at + self._leeway, self._expired)

    def _expired(self) -> None:
        """The token expired (contract.md §6): close with 3000."""
        if self._socket is not None:
            self._socket.transport.close(CLOSE_TOKEN_EXPIRED, "token expired")

    def closed(self) -> None:
        """Undo `opened` (if it ran) and give the per-IP slot back."""
        if self._socket is not None:
            socket_id = self._socket.identity.socket_id
            _needs(self._node.deps, "delivery").connections.remove(self._socket)
            if self._node.guards.get(socket_id) is self._guard:
                del self._node.guards[socket_id]
        if self._cancel_expiry is not None:
            self._cancel_expiry()
        self._admission.release()


def authenticator(node: Node) -> Authenticate:
    """The `authenticate` hook of `make_connect`: the gatekeeper admits (contract.md §1), the node registers."""
    gatekeeper = _needs(node.gatekeeper, "security")
    leeway = token_config(node.settings).leeway  # once: with public keys, building the config reads a file

    async def authenticate(token: str | None, request: UpgradeRequest) -> Admitted | Refuse:
        admission = await gatekeeper.admit(request, token)
        if isinstance(admission, Refuse):
            return admission
        registration = _Registration(node, admission, gatekeeper.guard(admission), leeway)
        verified = admission.token
        identity = Identity(verified.user_id, verified.device_id, verified.device_type)
        return Admitted(identity, opened=registration.opened, closed=registration.closed)

    return authenticate


async def _endpoint_child(node: Node, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
    pubsub = _needs(node.pubsub, "pubsub")
    deps = _needs(node.deps, "delivery")
    node.drainer = drainer = Drainer(drain_config(node.settings))
    # Redirect mode: an overloaded node answers new sockets 503 + Retry-After (whispr.cluster.health)
    overload = OverloadGuard(health_thresholds(node.settings), lambda: len(drainer))
    connect = drainer.wrap(make_connect(make_router(deps), pubsub, authenticator(node), overload=overload.refusal))
    ready = readiness(node)

    async def metrics() -> tuple[bytes, str]:
        return await trio.to_thread.run_sync(node.metrics.render)

    node.endpoint = Endpoint(
        endpoint_config(node.settings, reuse_port=node.reuse_port),
        connect,
        http_routes=http_routes(ready=ready.ready, metrics=metrics),
        http_prefix_routes=service_routes(node),
    )
    stop = supervisors.trap_shutdown()  # asked to stop (SIGTERM): drain before the tree goes on
    async with trio.open_nursery() as nursery:
        await nursery.start(overload.run)
        node.address = await nursery.start(node.endpoint.serve)
        task_status.started(node.address)
        await stop.wait()
        ready.drain()  # /ready fails first, then the sockets move (contract.md §6 1012)
        await drainer.drain()
        nursery.cancel_scope.cancel()


def service_routes(node: Node) -> dict[str, HttpHandler]:
    """`/api/v1/` (contract.md §7), served only when an API key is configured."""
    if not node.settings.api_key:
        return {}
    api = ServiceApi(
        _needs(node.deps, "delivery"),
        _needs(node.pubsub, "pubsub"),
        [node.settings.api_key],
        max_content_bytes=node.settings.max_content_bytes,
    )

    async def handle(request: HttpRequest) -> HttpResponse:
        status, headers, body = await api.handle(request.method, request.path, request.headers, request.body)
        return HttpResponse(status, tuple(headers), body)

    return {"/api/v1/": handle}


def _needs(value: Any, name: str) -> Any:
    if value is None:
        raise RuntimeError(f"{name} is not running: the tree's start order is wrong")
    return value


def build_tree(node: Node) -> supervisors.Supervisor:
    """The root supervisor of `node` (see the module docstring)."""
    spec = supervisors.ChildSpec
    children = [
        spec("store", _store_child, (node,), shutdown=10.0),
        spec("pubsub", _pubsub_child, (node,)),
        *([spec("bridge", _bridge_child, (node,))] if node.settings.redis_url else []),
        spec("presence", _presence_child, (node,)),
        *([spec("cluster", _cluster_child, (node,))] if node.settings.redis_url else []),
        spec("delivery", _delivery_child, (node,)),
        spec("offline", _offline_child, (node,)),
        spec("security", _security_child, (node,)),
        spec("loop_lag", measure_loop_lag),
        spec("endpoint", _endpoint_child, (node,), shutdown=drain_config(node.settings).total + 1.0),
    ]
    return supervisors.Supervisor(
        "root", children, strategy=supervisors.Strategy.REST_FOR_ONE, intensity=3, period=10.0
    )


def readiness(node: Node) -> Readiness:
    """`/ready`: the store answers, the endpoint listens, the cluster membership (with Redis) is
    reachable, and the node is not draining."""

    async def store_ok() -> CheckResult:
        if node.store is None:
            return CheckResult(False, "not started")
        try:
            await node.store.user_active("__readiness_probe__")
        except StoreUnavailable as exc:
            return CheckResult(False, f"unavailable: {exc}")
        return CheckResult(True)

    async def listening() -> CheckResult:
        return CheckResult(node.address is not None, "" if node.address else "not listening")

    async def cluster_ok() -> CheckResult:
        healthy = node.cluster is not None and node.cluster.healthy
        return CheckResult(healthy, "" if healthy else "membership stream unreachable")

    checks: dict[str, Check] = {"store": store_ok, "endpoint": listening}
    if node.settings.redis_url:
        checks["cluster"] = cluster_ok
    return Readiness(checks, on_report=node.metrics.observe_readiness)


def limits_config(settings: Settings) -> LimitsConfig:
    """The contract.md §5 limits with the configured numbers."""
    return LimitsConfig(
        connections_per_ip=settings.connections_per_ip,
        connect_rate=Rate("connect", settings.connects_per_5min, 300.0, "sliding_window"),
        message_rate=Rate("message", settings.messages_per_minute, 60.0, "token_bucket"),
        join_rate=Rate("join", settings.joins_per_minute, 60.0, "sliding_window"),
        max_content_bytes=settings.max_content_bytes,
    )


def health_thresholds(settings: Settings) -> HealthThresholds:
    """The redirect-mode limits (contract.md §1: 503 + Retry-After when overloaded)."""
    return HealthThresholds(
        max_connections=settings.max_connections,
        max_loop_lag=settings.max_loop_lag,
        max_rss=settings.max_rss,
        retry_after=settings.overload_retry_after,
    )


def endpoint_config(settings: Settings, *, reuse_port: bool = False) -> EndpointConfig:
    """The listener: address, TLS, and the socket limits (contract.md §1, §5)."""
    return EndpointConfig(
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        ssl_context=ssl_context(settings),
        limits=WebSocketLimits(idle_timeout=settings.idle_timeout),
    )


def setup_logging(settings: Settings) -> None:
    fmt = settings.resolved_log_format
    configure_logging("json" if fmt == "json" else "text", settings.log_level, node=settings.node_id)
    attach_telemetry_logging()
    supervisors.add_report_listener(report_to_telemetry)


async def run_node(node: Node, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    """Run `node`'s tree until SIGTERM/SIGINT (then stop it within the grace) or until cancelled.

    Must run inside `open_bridge()`. Reports the node through `task_status` once it listens.
    """
    if not node.settings.store_url:  # the default SQLite store lives in the data dir
        node.settings.data_dir.mkdir(parents=True, exist_ok=True)
    root = build_tree(node)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisors.run_tree, root, node.settings.shutdown_grace)
        _log.info("node %s listening on %s:%d", node.settings.node_id, *_needs(node.address, "endpoint"))
        task_status.started(node)


def serve(settings: Settings, *, reuse_port: bool = False) -> None:
    """The `whispr serve` command: configure logging and run one node until a signal. Blocking.

    On SIGTERM/SIGINT the node drains (`whispr.gateway.drain`), then stops its tree in order.

    Raises:
        ConfigError: the drain window does not fit inside the shutdown grace.
    """
    drain_config(settings)  # refuse a drain window that the grace would cut short, before starting
    setup_logging(settings)
    node = Node(settings, Metrics(settings.node_id, max_connections=settings.max_connections), reuse_port=reuse_port)

    async def main() -> None:
        async with open_bridge(), trio.open_nursery() as nursery:
            await nursery.start(run_node, node)
            settle_heap()

    trio.run(main)


def settle_heap() -> None:
    """Once the node listens: move every object start-up made to the collector's permanent
    generation (`gc.freeze`), and collect the youngest generation every `GC_YOUNG_THRESHOLD`
    container allocations instead of every 700.

    Why: a connection is some 80 long-lived container objects, and every full collection walks
    all of them plus the ~50k objects of start-up; CPython starts one whenever the survivors grew
    by a quarter, i.e. several times during each connect storm (measured: a quarter of the CPU of
    a 3,000-socket storm, loadtest/RESULTS.md). Cycles are still collected: only how often the
    young generations are examined changes. Synchronous; call it once per process.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def dev_token(settings: Settings, user_id: str, device_id: str, ttl: float, device_type: str | None) -> str:
    """Mint a token with the configured HS256 secret (the `whispr token` command). Blocking.

    In dev mode the user is also made active in the store, so that the token connects at once
    (the user directory refuses unknown users, contract.md §1).
    """
    token = mint_token(token_config(settings), user_id, device_id, ttl=ttl, device_type=device_type)
    if settings.dev:

        async def activate() -> None:
            async with open_bridge(), open_store(settings.resolved_store_url) as store:
                await store.upsert_user(user_id, True)

        trio.run(activate)
    return token


def migrate(settings: Settings) -> list[int]:
    """Apply the store's migrations (the `whispr migrate` command). Blocking."""

    async def run() -> list[int]:
        async with open_bridge():
            return await migrate_store(settings.resolved_store_url)

    return trio.run(run)
