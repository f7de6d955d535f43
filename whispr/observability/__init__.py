"""Telemetry events, and the Prometheus metrics and logs that subscribe to them.

- `telemetry`: event names, `attach` / `detach` / `emit`.
- `metrics`: `Metrics`, the node's Prometheus families (the only prometheus_client user).
- `logs`: `configure_logging`, named loggers, connection context, secret redaction.
- `health`: `/health` and the `/ready` model (`Readiness`).
- `loop_lag`: `measure_loop_lag`, the event-loop lag probe.
- `supervision`: `report_to_telemetry`, supervisor reports as SUPERVISOR_RESTART events.
"""
