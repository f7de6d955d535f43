"""A small blocking client of the `/api/v1` service API, for the `whispr` CLI commands.

The commands talk to a running node over HTTP (any node of a cluster will do), with the bearer
API key, so they do exactly what a backend service would (contract.md §7). Blocking; not for use
inside the event loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from whispr.api.service import PREFIX


@dataclass(frozen=True)
class ApiResult:
    """An answer: `status` and the decoded JSON body (None for an empty body)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ApiClient:
    """`/api/v1` at `base_url` (e.g. http://127.0.0.1:4000) with `api_key`.

    Raises (from every call):
        OSError: the node cannot be reached (URLError is an OSError).
    """

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0) -> None:
        self._base = base_url.rstrip("/") + PREFIX
        self._key = api_key
        self._timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> ApiResult:
        """`method` on `PREFIX + path` with a JSON body; the JSON answer, whatever its status."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return ApiResult(response.status, _json(response.read()))
        except urllib.error.HTTPError as exc:
            return ApiResult(exc.code, _json(exc.read()))

    def create_conversation(self, members: list[str]) -> ApiResult:
        return self.call("POST", "conversations", {"members": members})

    def add_member(self, conversation_id: str, user_id: str) -> ApiResult:
        return self.call("POST", f"conversations/{quote(conversation_id, safe='')}/members", {"user_id": user_id})

    def remove_member(self, conversation_id: str, user_id: str) -> ApiResult:
        return self.call("DELETE", f"conversations/{quote(conversation_id, safe='')}/members/{quote(user_id, safe='')}")

    def post_message(self, conversation_id: str, message: dict[str, Any]) -> ApiResult:
        return self.call("POST", f"conversations/{quote(conversation_id, safe='')}/messages", message)

    def notify(self, user_id: str, notification: dict[str, Any]) -> ApiResult:
        return self.call("POST", f"users/{quote(user_id, safe='')}/notifications", notification)

    def set_active(self, user_id: str, active: bool) -> ApiResult:
        return self.call("PUT", f"users/{quote(user_id, safe='')}", {"active": active})

    def disconnect(self, user_id: str, device_id: str | None = None) -> ApiResult:
        user = quote(user_id, safe="")
        if device_id is None:
            return self.call("POST", f"users/{user}/disconnect")
        return self.call("POST", f"users/{user}/devices/{quote(device_id, safe='')}/disconnect")

    def connections(self) -> ApiResult:
        return self.call("GET", "connections")


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace").strip()}
