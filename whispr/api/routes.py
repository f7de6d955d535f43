"""The plain HTTP route table the endpoint serves (contract.md §7).

`http_routes` turns the node's probes into handlers for `whispr.gateway.endpoint.Endpoint`:
- `GET /health`: 200 `ok` while the process runs (liveness).
- `GET /ready`: 200 `ready` when `ready()` says so, else 503 `not ready` (readiness; the real
  checks — dependencies, pub/sub canary, draining — belong to the observability layer).
- `GET /metrics`: 200 with whatever `metrics()` renders, as Prometheus text. Rendering a large
  registry blocks for tens of milliseconds, so `metrics` is async: run the renderer in
  `trio.to_thread.run_sync`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from whispr.gateway.http import HttpHandler, HttpRequest, HttpResponse

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


def http_routes(
    *,
    ready: Callable[[], Awaitable[bool]] | None = None,
    metrics: Callable[[], Awaitable[tuple[bytes, str]]] | None = None,
) -> dict[str, HttpHandler]:
    """The route table: /health always; /ready and /metrics when their callables are given.

    Args:
        ready: awaited per probe; True means the node accepts traffic.
        metrics: awaited per scrape; returns (body, content type), e.g.
            `(await trio.to_thread.run_sync(generate_latest, registry), CONTENT_TYPE_LATEST)`.
    """

    async def health(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, _TEXT, b"ok\n")

    routes: dict[str, HttpHandler] = {"/health": health}

    if ready is not None:
        is_ready = ready

        async def readiness(request: HttpRequest) -> HttpResponse:
            if await is_ready():
                return HttpResponse(200, _TEXT, b"ready\n")
            return HttpResponse(503, _TEXT, b"not ready\n")

        routes["/ready"] = readiness

    if metrics is not None:
        render = metrics

        async def scrape(request: HttpRequest) -> HttpResponse:
            body, content_type = await render()
            return HttpResponse(200, (("Content-Type", content_type),), body)

        routes["/metrics"] = scrape

    return routes
