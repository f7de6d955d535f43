"""Message store interface, idempotency, offline queue and replay (the delivery guarantees)."""
