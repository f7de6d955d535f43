"""Who is on a socket: produced by the connect-time `authenticate` hook, read by channels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated device (contract.md §1: JWT `sub`/`user_id`, `device_id`, `device_type`).

    Ids are strings: topics are compared with them as strings (protocol.md §8).
    """

    user_id: str
    device_id: str
    device_type: str | None = None

    @property
    def socket_id(self) -> str:
        """The socket id (`Phoenix.Socket` `id/1`), the topic of a server-side disconnect (§4.9)."""
        return f"user_socket:{self.user_id}:{self.device_id}"
