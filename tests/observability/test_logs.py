from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Literal

import pytest
import trio

from whispr.observability import logs, telemetry

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSJ9.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """configure_logging into a StringIO; restores the root logger afterwards."""
    root = logging.getLogger()
    level = root.level
    installed: list[logging.Handler] = []

    def configure(
        format: Literal["json", "text"], level: int | str = logging.DEBUG, node: str | None = "n1"
    ) -> io.StringIO:
        stream = io.StringIO()
        installed.append(logs.configure_logging(format, level, node=node, stream=stream))
        return stream

    yield configure
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_is_one_object_per_line_with_context(configure: Configure) -> None:
    stream = configure("json")
    with logs.log_context(conn_id="c1", user_id="u1", device_id="d1"):
        logging.getLogger(logs.GATEWAY).info("socket opened %s", "vsn=2.0.0", extra={"remote": "10.0.0.1"})
    logging.getLogger(logs.CHANNEL).warning("outside\nany connection")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["ts"].endswith("Z")
    assert {k: v for k, v in first.items() if k != "ts"} == {
        "level": "INFO",
        "logger": "whispr.gateway",
        "msg": "socket opened vsn=2.0.0",
        "node": "n1",
        "conn_id": "c1",
        "user_id": "u1",
        "device_id": "d1",
        "remote": "10.0.0.1",
    }
    assert {k: v for k, v in second.items() if k != "ts"} == {
        "level": "WARNING",
        "logger": "whispr.channel",
        "msg": "outside\nany connection",
        "node": "n1",
    }


def test_json_carries_the_traceback_in_one_line(configure: Configure) -> None:
    stream = configure("json")
    try:
        raise ValueError("bad frame")
    except ValueError:
        logging.getLogger(logs.CHANNEL).exception("callback crashed")
    [line] = lines(stream)
    document = json.loads(line)
    assert document["level"] == "ERROR"
    assert "Traceback" in document["exc_info"]
    assert "ValueError: bad frame" in document["exc_info"]


def test_text_is_one_readable_line(configure: Configure) -> None:
    stream = configure("text")
    with logs.log_context(conn_id="c1", user_id="u1"):
        logging.getLogger(logs.DELIVERY).warning("slow consumer dropped\nclosing", extra={"depth": 1000})
    [line] = lines(stream)
    timestamp, rest = line.split(" ", 1)
    assert timestamp.endswith("Z")
    assert rest == r"WARNING whispr.delivery slow consumer dropped\nclosing node=n1 conn_id=c1 user_id=u1 depth=1000"


def test_text_puts_a_traceback_on_indented_lines(configure: Configure) -> None:
    stream = configure("text")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger(logs.CHANNEL).exception("callback crashed")
    first, *rest = lines(stream)
    assert first.endswith("ERROR   whispr.channel callback crashed node=n1")
    assert rest[0] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") for line in rest)


async def test_context_follows_child_tasks_and_threads_and_is_restored(configure: Configure) -> None:
    stream = configure("json")
    log = logging.getLogger(logs.GATEWAY)

    def in_thread() -> None:
        log.info("from a thread")

    with logs.log_context(conn_id="c7", user_id="u7"):
        with logs.log_context(device_id="d7"):
            assert logs.current_context() == logs.LogContext("c7", "u7", "d7")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, in_thread)
    log.info("after")
    records = [json.loads(line) for line in lines(stream)]
    assert [(r["msg"], r.get("conn_id"), r.get("user_id"), r.get("device_id")) for r in records] == [
        ("from a thread", "c7", "u7", None),
        ("after", None, None, None),
    ]


@pytest.mark.parametrize("format", ["json", "text"])
def test_secrets_never_reach_the_output(configure: Configure, format: Literal["json", "text"]) -> None:
    stream = configure(format)
    log = logging.getLogger(logs.GATEWAY)
    log.info("upgrade GET /socket/websocket?vsn=2.0.0&token=SECRETMARKER1&x=1")
    log.info("header %s", f"Authorization: Bearer {JWT}")
    log.info("args %s %r", JWT, {"password": "SECRETMARKER2", "api_key": "SECRETMARKER3"})
    log.info("protocol %s", "phoenix, base64url.bearer.phx.U0VDUkVUTUFSS0VSNA")
    log.info("extra", extra={"query": "token=SECRETMARKER5", "nested": {"jwt": JWT}})
    try:
        raise PermissionError(f"bad token {JWT}")
    except PermissionError:
        log.exception("refused password=SECRETMARKER6")
    output = stream.getvalue()
    assert "SECRETMARKER" not in output
    assert "eyJ" not in output
    assert "U0VDUkVUTUFSS0VSNA" not in output
    assert output.count(logs.REDACTED) >= 8
    assert "vsn=2.0.0" in output
    assert "&x=1" in output


@pytest.mark.parametrize(
    ("raw", "redacted"),
    [
        ("?token=abc&vsn=2", "?token=[REDACTED]&vsn=2"),
        ("access_token=abc", "access_token=[REDACTED]"),
        ('{"password": "hunter2", "user": "u1"}', '{"password": "[REDACTED]", "user": "u1"}'),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [REDACTED]"),
        ("authorization=Bearer abc.def", "authorization=[REDACTED]"),
        ("sent Bearer abc.def", "sent Bearer [REDACTED]"),
        (f"jwt {JWT} end", "jwt [REDACTED] end"),
        ("no secrets here: user_id=u1", "no secrets here: user_id=u1"),
    ],
)
def test_redact(raw: str, redacted: str) -> None:
    assert logs.redact(raw) == redacted


def test_secrets_filter_survives_a_format_mismatch() -> None:
    record = logging.LogRecord(logs.GATEWAY, logging.INFO, __file__, 1, "two %s %s token=%s", ("one",), None)
    assert logs.SecretsFilter().filter(record)
    assert record.getMessage() == "'two %s %s token=[REDACTED]' (arguments did not match the format)"


REPORT = {
    "supervisor": "root",
    "error_context": "child_terminated",
    "reason": "RuntimeError('redis gone')",
    "offender": {"id": "pubsub", "restart": "permanent", "shutdown": 5.0, "type": "worker", "task": "<Task pubsub>"},
}


def test_supervisor_report_is_one_readable_text_line(configure: Configure) -> None:
    stream = configure("text")
    logging.getLogger(logs.SUPERVISORS).error("child terminated", extra={"report": REPORT})
    [line] = lines(stream)
    assert line.split(" ", 1)[1] == (
        "ERROR   supervisors child terminated node=n1 supervisor=root error_context=child_terminated "
        "reason=\"RuntimeError('redis gone')\" "
        "offender={id=pubsub restart=permanent shutdown=5.0 type=worker task='<Task pubsub>'}"
    )


def test_supervisor_report_text_is_depth_limited(configure: Configure) -> None:
    stream = configure("text")
    deep = {"a": {"b": {"c": {"d": 1}}}}
    logging.getLogger(logs.SUPERVISORS).info("progress", extra={"report": deep})
    assert lines(stream)[0].endswith("progress node=n1 a={b={c={…}}}")


def test_supervisor_report_is_structured_in_json(configure: Configure) -> None:
    stream = configure("json")
    logging.getLogger(logs.SUPERVISORS).error("child terminated", extra={"report": REPORT})
    [line] = lines(stream)
    assert json.loads(line)["report"] == REPORT


def test_reconfiguring_replaces_the_previous_handler(configure: Configure) -> None:
    first = configure("text")
    second = configure("json", logging.WARNING)
    logging.getLogger(logs.CLUSTER).warning("node down")
    logging.getLogger(logs.CLUSTER).info("not at WARNING")
    assert first.getvalue() == ""
    assert [json.loads(line)["msg"] for line in lines(second)] == ["node down"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json"):
        logs.configure_logging("yaml")  # type: ignore[arg-type]


@pytest.fixture
def telemetry_logs(configure: Configure) -> Iterator[io.StringIO]:
    stream = configure("json", logging.INFO)
    logs.attach_telemetry_logging("test.logs")
    yield stream
    telemetry.detach("test.logs")


def test_loop_lag_over_the_threshold_is_a_warning(telemetry_logs: io.StringIO) -> None:
    telemetry.emit(telemetry.LOOP_LAG, {"lag": 0.01})
    telemetry.emit(telemetry.LOOP_LAG, {"lag": 0.5})
    [record] = [json.loads(line) for line in lines(telemetry_logs)]
    assert (record["level"], record["logger"], record["msg"]) == ("WARNING", "whispr.runtime", "loop.lag")
    assert record["telemetry"] == {"lag": 0.5}


def test_below_debug_no_other_event_is_logged_even_if_debug_is_enabled_later(telemetry_logs: io.StringIO) -> None:
    logging.getLogger().setLevel(logging.DEBUG)
    telemetry.emit(telemetry.MESSAGE_RECEIVED, {"size": 10.0}, {"channel": "conversation:1", "event": "send_message"})
    telemetry.emit(telemetry.SOCKET_CONNECTED, {}, {"transport": "websocket", "vsn": "2.0.0"})
    assert telemetry_logs.getvalue() == ""


def test_at_debug_every_event_is_traced_on_its_layer_logger(configure: Configure) -> None:
    stream = configure("text", logging.DEBUG)
    logs.attach_telemetry_logging("test.logs.debug")
    try:
        telemetry.emit(
            telemetry.MESSAGE_RECEIVED, {"size": 10.0}, {"channel": "conversation:1", "event": "send_message"}
        )
        telemetry.emit(telemetry.SOCKET_REFUSED, {}, {"status": 403, "reason": f"bad token {JWT}"})
        telemetry.emit(telemetry.NODE_DOWN, {}, {"node": "n2"})
    finally:
        telemetry.detach("test.logs.debug")
    assert [line.split(" ", 1)[1] for line in lines(stream)] == [
        "DEBUG   whispr.channel message.received node=n1 channel=conversation:1 event=send_message size=10.0",
        "DEBUG   whispr.gateway socket.refused node=n1 status=403 reason='bad token [REDACTED]'",
        "DEBUG   whispr.cluster node.down node=n1 telemetry.node=n2",
    ]
