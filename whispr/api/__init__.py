"""HTTP served beside the WebSocket on the same port: /health, /ready, /metrics (and later /api/v1)."""
