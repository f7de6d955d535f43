"""Telemetry events, and the Prometheus metrics and logs that subscribe to them."""
