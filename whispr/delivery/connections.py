"""The node's connected sockets by socket id: device replacement, kicks and the connection list.

Contract §1: the socket id is `user_socket:<user_id>:<device_id>`, and a second socket of the same
device replaces the first, which closes with 1001. §7: the service API disconnects a user or one
device, and lists connections. The gateway adds each Phoenix socket when it is built and removes
it when its connection is gone; everything here is synchronous and never blocks.
"""

from __future__ import annotations

from typing import Protocol

from whispr.protocol import Identity


class Closable(Protocol):
    """The part of a transport the registry uses (`whispr.gateway.transport.Transport.close`)."""

    def close(self, code: int, reason: str = "") -> None:
        """Close with `code` after what is queued; idempotent."""
        ...


class Connection(Protocol):
    """A connected socket (`whispr.gateway.socket.PhoenixSocket` is one)."""

    @property
    def identity(self) -> Identity:
        """Who is connected."""
        ...

    @property
    def transport(self) -> Closable:
        """Its transport."""
        ...

    @property
    def topics(self) -> list[str]:
        """The topics it has joined."""
        ...

    def disconnect(self) -> None:
        """Close with 1001 so that the client reconnects (protocol.md §4.9)."""
        ...


class Revocations(Protocol):
    """Where this node's disconnects go to reach every other node (the cluster bridge)."""

    def disconnect(self, user_id: str, device_id: str | None) -> None:
        """Ask the other nodes to disconnect the user's sockets (all when `device_id` is None).
        Synchronous, never blocks."""
        ...


class ConnectionRegistry:
    """Socket id -> connection, for one node; with `set_remote`, disconnects reach every node."""

    __slots__ = ("_by_id", "_remote")

    def __init__(self) -> None:
        # socket id -> the newest connection of that device
        self._by_id: dict[str, Connection] = {}
        self._remote: Revocations | None = None

    def set_remote(self, remote: Revocations | None) -> None:
        """Fan every disconnect, and every new socket's replacement of its device, out to `remote`."""
        self._remote = remote

    def add(self, connection: Connection) -> None:
        """Register a new socket; an older socket of the same device, on this node or any other,
        is disconnected (1001; contract §1 "a second socket of the same device replaces the first")."""
        identity = connection.identity
        old = self._by_id.get(identity.socket_id)
        self._by_id[identity.socket_id] = connection
        if old is not None and old is not connection:
            old.disconnect()
        if self._remote is not None:
            self._remote.disconnect(identity.user_id, identity.device_id)

    def remove(self, connection: Connection) -> None:
        """Forget a closed socket (not its replacement). Idempotent."""
        socket_id = connection.identity.socket_id
        if self._by_id.get(socket_id) is connection:
            del self._by_id[socket_id]

    def __len__(self) -> int:
        return len(self._by_id)

    def disconnect_user(self, user_id: str) -> int:
        """Disconnect (1001) every socket of the user on every node; return how many were here."""
        if self._remote is not None:
            self._remote.disconnect(user_id, None)
        return self.revoke_local(user_id, None)

    def disconnect_device(self, user_id: str, device_id: str) -> bool:
        """Disconnect (1001) the device's socket on every node; False if it was not connected here."""
        if self._remote is not None:
            self._remote.disconnect(user_id, device_id)
        return self.revoke_local(user_id, device_id) == 1

    def revoke_local(self, user_id: str, device_id: str | None) -> int:
        """Disconnect (1001) the user's sockets on this node only (all when `device_id` is None);
        return how many. What another node's disconnect calls here."""
        if device_id is not None:
            connection = self._by_id.get(Identity(user_id, device_id).socket_id)
            found = [] if connection is None else [connection]
        else:
            found = [c for c in self._by_id.values() if c.identity.user_id == user_id]
        for connection in found:
            connection.disconnect()
        return len(found)

    def close(self, identity: Identity, code: int, reason: str) -> None:
        """Close the identity's socket with `code` (e.g. 1008 when abuse detection blocks it)."""
        connection = self._by_id.get(identity.socket_id)
        if connection is not None:
            connection.transport.close(code, reason)

    def describe(self) -> list[dict[str, object]]:
        """The connections as `GET /api/v1/connections` lists them, sorted by socket id."""
        return [
            {
                "user_id": c.identity.user_id,
                "device_id": c.identity.device_id,
                "device_type": c.identity.device_type,
                "topics": c.topics,
            }
            for _, c in sorted(self._by_id.items())
        ]
