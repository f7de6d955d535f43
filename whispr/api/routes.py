"""The plain HTTP route table the endpoint serves (contract.md §7).

`http_routes` turns the node's probes into handlers for `whispr.gateway.endpoint.Endpoint`:
- `GET /health`: 200 `{"status":"ok"}` while the process runs (liveness).
- `GET /ready`: whatever `ready()` answers: 200 or 503 with a JSON body naming each check
  (`whispr.observability.health.Readiness.ready`).
- `GET /metrics`: 200 with whatever `metrics()` renders, as Prometheus text. Rendering a large
  registry blocks for tens of milliseconds, so `metrics` is async: run the renderer in
  `trio.to_thread.run_sync`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from whispr.gateway.http import HttpHandler, HttpRequest, HttpResponse
from whispr.observability.health import health

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_JSON = (("Content-Type", "application/json"),)


def http_routes(
    *,
    ready: Callable[[], Awaitable[tuple[int, bytes]]] | None = None,
    metrics: Callable[[], Awaitable[tuple[bytes, str]]] | None = None,
) -> dict[str, HttpHandler]:
    """The route table: /health always; /ready and /metrics when their callables are given.

    Args:
        ready: awaited per probe; returns (200 or 503, JSON body).
        metrics: awaited per scrape; returns (body, content type), e.g.
            `(await trio.to_thread.run_sync(generate_latest, registry), CONTENT_TYPE_LATEST)`.
    """

    async def liveness(request: HttpRequest) -> HttpResponse:
        status, body = health()
        return HttpResponse(status, _JSON, body)

    routes: dict[str, HttpHandler] = {"/health": liveness}

    if ready is not None:
        is_ready = ready

        async def readiness(request: HttpRequest) -> HttpResponse:
            status, body = await is_ready()
            return HttpResponse(status, _JSON, body)

        routes["/ready"] = readiness

    if metrics is not None:
        render = metrics

        async def scrape(request: HttpRequest) -> HttpResponse:
            body, content_type = await render()
            return HttpResponse(200, (("Content-Type", content_type),), body)

        routes["/metrics"] = scrape

    return routes
