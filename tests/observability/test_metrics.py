from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from tests.observability.scrape import Samples, emit_every_event, parse, value
from whispr.observability import telemetry
from whispr.observability.health import CheckState, ReadinessReport
from whispr.observability.metrics import FREE_LABEL_CAP, OTHER, FreeLabel, Metrics, topic_prefix


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics("n1", max_connections=10_000, handler_id="test.metrics")
    yield m
    m.detach()


def scrape(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE_LATEST
    return parse(body.decode())


def test_every_event_updates_its_family(metrics: Metrics) -> None:
    emit_every_event()
    s = scrape(metrics)

    assert value(s, "whispr_connections_active") == 0  # one connected, one closed
    assert value(s, "whispr_connections_max") == 10_000
    assert value(s, "whispr_connections_total", vsn="2.0.0") == 1
    assert value(s, "whispr_connections_closed_total", code="1013") == 1
    assert value(s, "whispr_connection_duration_seconds_sum") == 42.0
    assert value(s, "whispr_connections_refused_total", status="429", reason="ip_connection_cap") == 1
    assert value(s, "whispr_channel_joins_total", channel="conversation") == 1
    assert value(s, "whispr_channel_join_duration_seconds_count", channel="conversation") == 1
    assert value(s, "whispr_channel_join_refusals_total", channel="conversation", reason="not_member") == 1
    assert value(s, "whispr_channel_leaves_total", channel="conversation") == 1
    assert value(s, "whispr_channel_crashes_total", channel="user") == 1
    assert value(s, "whispr_messages_received_total", channel="conversation", event="send_message") == 1
    assert value(s, "whispr_messages_sent_total", kind="broadcast") == 3
    assert value(s, "whispr_message_size_bytes_sum", direction="in") == 300
    assert value(s, "whispr_message_size_bytes_count", direction="out") == 1
    assert value(s, "whispr_reply_duration_seconds_count", event="send_message", status="ok") == 1
    for part, seconds in {"store": 0.003, "pubsub": 0.002, "queue": 0.001, "total": 0.006}.items():
        assert value(s, "whispr_delivery_latency_seconds_sum", path="live", part=part) == pytest.approx(seconds)
        assert value(s, "whispr_delivery_latency_seconds_bucket", path="live", part=part, le="0.01") == 1
    assert value(s, "whispr_outbox_depth_frames_bucket", le="10.0") == 1
    assert value(s, "whispr_outbox_depth_frames_bucket", le="5.0") == 0
    assert value(s, "whispr_slow_consumer_drops_total", reason="overflow") == 1
    assert value(s, "whispr_slow_consumer_dropped_frames_total", reason="overflow") == 12
    assert value(s, "whispr_limit_exceeded_total", limit="messages_per_user") == 1
    assert value(s, "whispr_abuse_detected_total", detector="spam") == 1
    assert value(s, "whispr_presence_diffs_total", channel="conversation") == 1
    assert value(s, "whispr_presence_changes_total", channel="conversation", change="join") == 2
    assert value(s, "whispr_presence_changes_total", channel="conversation", change="leave") == 1
    assert value(s, "whispr_recoveries_total", outcome="recovered") == 1
    assert value(s, "whispr_recovery_replayed_messages_total", outcome="recovered") == 5
    restarts = {"supervisor": "root", "child": "pubsub", "context": "child_terminated"}
    assert value(s, "whispr_supervisor_restarts_total", **restarts) == 1
    assert value(s, "whispr_circuit_state", breaker="redis", state="open") == 1
    assert value(s, "whispr_circuit_state", breaker="redis", state="closed") == 0
    assert value(s, "whispr_circuit_state", breaker="redis", state="half_open") == 0
    assert value(s, "whispr_circuit_transitions_total", breaker="redis", state="open") == 1
    assert value(s, "whispr_dependency_call_duration_seconds_count", dependency="redis", operation="publish") == 1
    assert value(s, "whispr_dependency_calls_total", dependency="redis", operation="publish", outcome="ok") == 1
    assert value(s, "whispr_cluster_nodes") == 2  # n1 itself and n2; n3 went down
    assert value(s, "whispr_cluster_node_events_total", event="up") == 1
    assert value(s, "whispr_cluster_node_events_total", event="down") == 1
    assert value(s, "whispr_event_loop_lag_seconds_sum") == pytest.approx(0.003)
    assert value(s, "whispr_pubsub_resyncs_total", reason="resubscribe") == 1
    assert value(s, "process_resident_memory_bytes") > 0


def test_every_series_carries_the_node_label(metrics: Metrics) -> None:
    emit_every_event()
    assert {dict(labels).get("node") for _, labels in scrape(metrics)} == {"n1"}


def test_no_created_series(metrics: Metrics) -> None:
    emit_every_event()
    assert not [name for name, _ in scrape(metrics) if name.endswith("_created")]


def test_connection_cap_is_absent_when_not_configured() -> None:
    m = Metrics("n1", handler_id="test.nocap", process_metrics=False)
    try:
        names = {name for name, _ in parse(m.render()[0].decode())}
    finally:
        m.detach()
    assert "whispr_connections_max" not in names
    assert not [name for name in names if name.startswith("process_")]


def test_circuit_state_is_one_hot_across_transitions(metrics: Metrics) -> None:
    for state in ("open", "half_open", "closed"):
        telemetry.emit(telemetry.CIRCUIT_STATE, {}, {"breaker": "postgres", "state": state})
    s = scrape(metrics)
    states = {
        st: value(s, "whispr_circuit_state", breaker="postgres", state=st) for st in ("closed", "open", "half_open")
    }
    assert states == {"closed": 1, "open": 0, "half_open": 0}
    assert value(s, "whispr_circuit_transitions_total", breaker="postgres", state="half_open") == 1


def test_cluster_nodes_never_drops_this_node(metrics: Metrics) -> None:
    telemetry.emit(telemetry.NODE_DOWN, {}, {"node": "n1"})
    telemetry.emit(telemetry.NODE_UP, {}, {"node": "n2"})
    telemetry.emit(telemetry.NODE_UP, {}, {"node": "n2"})
    assert value(scrape(metrics), "whispr_cluster_nodes") == 2


def test_readiness_reports_become_gauges(metrics: Metrics) -> None:
    assert not [name for name, _ in scrape(metrics) if name in ("whispr_ready", "whispr_draining")]
    report = ReadinessReport(
        checks=(CheckState("store", True, ""), CheckState("pubsub", False, "stale")), draining=False
    )
    metrics.observe_readiness(report)
    s = scrape(metrics)
    assert value(s, "whispr_ready") == 0
    assert value(s, "whispr_draining") == 0
    assert value(s, "whispr_readiness_check_ok", check="store") == 1
    assert value(s, "whispr_readiness_check_ok", check="pubsub") == 0


def test_detach_stops_counting(metrics: Metrics) -> None:
    metrics.detach()
    telemetry.emit(telemetry.SOCKET_CONNECTED, {}, {"vsn": "2.0.0"})
    assert value(scrape(metrics), "whispr_connections_active") == 0


def test_two_instances_do_not_share_series(metrics: Metrics) -> None:
    other = Metrics("n2", handler_id="test.metrics.other", process_metrics=False)
    try:
        telemetry.emit(telemetry.SOCKET_CONNECTED, {}, {"vsn": "2.0.0"})
        other.detach()
        telemetry.emit(telemetry.SOCKET_CONNECTED, {}, {"vsn": "2.0.0"})
        assert value(scrape(metrics), "whispr_connections_active") == 2
        assert value(scrape(other), "whispr_connections_active") == 1
    finally:
        other.detach()


def test_negative_or_missing_measurements_do_not_detach_the_handler(metrics: Metrics) -> None:
    telemetry.emit(telemetry.MESSAGE_SENT, {"size": 10.0, "count": -1.0}, {"kind": "push"})
    telemetry.emit(telemetry.SLOW_CONSUMER_DROPPED, {}, {})
    telemetry.emit(telemetry.SOCKET_CONNECTED, {}, {})
    s = scrape(metrics)
    assert value(s, "whispr_messages_sent_total", kind="push") == 0
    assert value(s, "whispr_slow_consumer_drops_total", reason=OTHER) == 1
    assert value(s, "whispr_connections_total", vsn=OTHER) == 1


def series_count(metrics: Metrics) -> int:
    return len(scrape(metrics))


def test_ids_and_topics_in_metadata_never_grow_the_series(metrics: Metrics) -> None:
    def emit_for(i: int) -> None:
        user = {"user_id": f"u{i}", "device_id": f"d{i}", "token": f"eyJhbGciOi.{i}.sig"}
        topic = f"conversation:{i}"
        telemetry.emit(telemetry.SOCKET_CONNECTED, {}, {"vsn": "2.0.0", "transport": "websocket", **user})
        telemetry.emit(telemetry.CHANNEL_JOINED, {"duration": 0.001}, {"channel": topic, **user})
        telemetry.emit(telemetry.MESSAGE_RECEIVED, {"size": 100.0}, {"channel": topic, "event": f"evt{i}", **user})
        telemetry.emit(
            telemetry.REPLY_LATENCY, {"duration": 0.01}, {"channel": topic, "event": f"evt{i}", "status": "ok"}
        )
        telemetry.emit(telemetry.CHANNEL_JOIN_REFUSED, {}, {"channel": f"user:{i}", "reason": f"why {i}"})
        telemetry.emit(telemetry.PRESENCE_DIFF, {"joins": 1.0, "leaves": 0.0}, {"channel": topic})
        telemetry.emit(telemetry.NODE_UP, {}, {"node": f"node-{i}"})
        telemetry.emit(telemetry.SOCKET_CLOSED, {"duration": 1.0}, {"code": 4100 + i})

    emit_for(0)
    before = series_count(metrics)
    for i in range(1, 1000):
        emit_for(i)
    assert series_count(metrics) == before


def test_free_form_labels_are_capped(metrics: Metrics) -> None:
    telemetry.emit(telemetry.LIMIT_EXCEEDED, {}, {"limit": "seed"})
    before = series_count(metrics)
    for i in range(1000):
        telemetry.emit(telemetry.LIMIT_EXCEEDED, {}, {"limit": f"limit_{i}"})
    # the cap's remaining slots, plus one "other" series
    assert series_count(metrics) == before + FREE_LABEL_CAP - 1 + 1
    assert value(scrape(metrics), "whispr_limit_exceeded_total", limit=OTHER) == 1000 - (FREE_LABEL_CAP - 1)


@pytest.mark.parametrize(
    "raw",
    [
        "eyJhbGciOiJIUzI1NiJ9",
        "user_socket:u1:d1",
        "https://evil/?token=x",
        "12345",
        "a" * 49,
        "",
    ],
)
def test_free_label_refuses_ids_and_secrets(raw: str) -> None:
    assert FreeLabel()(raw) == OTHER


def test_free_label_keeps_known_values_after_the_cap() -> None:
    label = FreeLabel(cap=2)
    assert [label(v) for v in ("a", "b", "c", "a", "b")] == ["a", "b", OTHER, "a", "b"]


def test_supervisor_child_ids_are_cut_at_the_colon(metrics: Metrics) -> None:
    for i in range(100):
        telemetry.emit(
            telemetry.SUPERVISOR_RESTART,
            {},
            {"supervisor": "sockets", "child": f"socket:user_socket:u{i}:d{i}", "context": "child_terminated"},
        )
    s = scrape(metrics)
    assert value(s, "whispr_supervisor_restarts_total", supervisor="sockets", child="socket") == 100


@pytest.mark.parametrize(
    ("topic", "label"),
    [
        ("user:42", "user"),
        ("conversation:c:1", "conversation"),
        ("notification:u", "notification"),
        ("phoenix", "phoenix"),
        ("room:1", OTHER),
        (None, OTHER),
    ],
)
def test_topic_prefix(topic: object, label: str) -> None:
    assert topic_prefix(topic) == label


def test_no_token_reaches_the_exposition(metrics: Metrics) -> None:
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJTRUNSRVRNQVJLRVIifQ.sig"
    for event in (telemetry.SOCKET_REFUSED, telemetry.LIMIT_EXCEEDED, telemetry.DEPENDENCY_CALL):
        telemetry.emit(
            event, {}, {"reason": secret, "limit": secret, "operation": f"get?token={secret}", "token": secret}
        )
    body, _ = metrics.render()
    assert b"eyJ" not in body
    assert b"token" not in body


async def test_render_runs_in_a_worker_thread(metrics: Metrics) -> None:
    telemetry.emit(telemetry.SOCKET_CONNECTED, {}, {"vsn": "1.0.0"})
    body, content_type = await trio.to_thread.run_sync(metrics.render)
    assert value(parse(body.decode()), "whispr_connections_total", vsn="1.0.0") == 1
    assert content_type.startswith("text/plain")
