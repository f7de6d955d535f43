from __future__ import annotations

from collections.abc import Iterator

import pytest

from whispr.observability import telemetry


@pytest.fixture
def seen() -> Iterator[list[tuple[str, dict[str, float], dict[str, object]]]]:
    calls: list[tuple[str, dict[str, float], dict[str, object]]] = []
    telemetry.attach("test", [telemetry.SOCKET_CONNECTED], lambda e, m, md: calls.append((e, dict(m), dict(md))))
    yield calls
    telemetry.detach("test")


def test_emit_reaches_attached_handler(seen: list[tuple[str, dict[str, float], dict[str, object]]]) -> None:
    telemetry.emit(telemetry.SOCKET_CONNECTED, {"n": 1.0}, {"vsn": "2.0.0"})
    telemetry.emit(telemetry.SOCKET_CLOSED, {"duration": 1.0})
    assert seen == [(telemetry.SOCKET_CONNECTED, {"n": 1.0}, {"vsn": "2.0.0"})]


def test_duplicate_handler_id_is_refused(seen: list[tuple[str, dict[str, float], dict[str, object]]]) -> None:
    with pytest.raises(ValueError, match="already attached"):
        telemetry.attach("test", [telemetry.SOCKET_CLOSED], lambda e, m, md: None)


def test_failing_handler_is_detached_and_emit_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    def boom(event: str, measurements: telemetry.Measurements, metadata: telemetry.Metadata) -> None:
        raise RuntimeError("handler bug")

    telemetry.attach("boom", [telemetry.NODE_UP], boom)
    telemetry.emit(telemetry.NODE_UP)
    telemetry.emit(telemetry.NODE_UP)
    assert [r.message for r in caplog.records] == ["telemetry handler 'boom' failed on node.up and was detached"]
