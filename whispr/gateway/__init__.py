"""Trio I/O for client sockets: listener, HTTP front door, WebSocket connections, outboxes."""
