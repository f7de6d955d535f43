"""Each load scenario, briefly, against the in-process stand-in (the workers are real subprocesses)."""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
import trio

from loadtest.config import Config
from loadtest.runner import LoadtestError, run
from tests.loadtest.standin import LoadStandIn

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def standin(nursery: trio.Nursery) -> LoadStandIn:
    result: LoadStandIn = await nursery.start(LoadStandIn().serve)
    return result


def config(standin: LoadStandIn, scenario: str, **kw: Any) -> Config:
    base: dict[str, Any] = {
        "url": standin.url,
        "connections": 20,
        "rate": 400.0,
        "duration": 3.0,
        "connect_timeout": 5.0,
        "server_pid": os.getpid(),
        "progress_interval": 0.2,
    }
    base.update(kw)
    return Config(scenario=scenario, **base)


async def run_quietly(cfg: Config) -> tuple[dict[str, Any], str]:
    progress = io.StringIO()
    with trio.fail_after(60):
        summary = await run(cfg, progress_stream=progress)
    return summary, progress.getvalue()


async def test_connect_storm_over_two_procs_and_source_ips(standin: LoadStandIn) -> None:
    summary, progress = await run_quietly(config(standin, "connect", procs=2, source_ips=4, token="t"))
    assert summary["attempted"] == summary["joined"] == 20
    assert summary["failed"] == 0
    assert summary["failures"] == {}
    assert summary["success_rate"] == 1
    for phase in ("tcp_latency", "upgrade_latency", "join_latency"):
        assert summary[phase]["count"] == 20
        assert 0 < summary[phase]["p50_ms"] <= summary[phase]["p99_ms"] <= summary[phase]["max_ms"]
    assert summary["tcp_latency"]["p50_ms"] <= summary["join_latency"]["p50_ms"]
    assert summary["connects_per_s"] > 0
    assert summary["server_cpu_us_per_connect"] is not None
    assert summary["client_kib_per_conn"] is not None
    assert standin.connects == 20
    assert "[connect]" in progress


async def test_connect_refused_counts_failures(standin: LoadStandIn) -> None:
    summary, _ = await run_quietly(config(standin, "connect", connections=10, token="bad"))
    assert summary["joined"] == 0
    assert summary["failures"] == {"http_403": 10}
    assert summary["attempted"] == summary["joined"] + summary["failed"]
    assert standin.refused == 10


async def test_connect_join_refused_and_auth_token(standin: LoadStandIn) -> None:
    cfg = config(standin, "connect", connections=5, topic="room:refused", auth_token="abc.def")
    summary, _ = await run_quietly(cfg)
    assert summary["failures"] == {"join_unauthorized": 5}
    assert all(p == ["phoenix", "base64url.bearer.phx.YWJjLmRlZg"] for p in standin.subprotocols)


async def test_hold_reports_server_memory_and_cpu(standin: LoadStandIn) -> None:
    summary, _ = await run_quietly(config(standin, "hold", duration=0.5, heartbeat=0.1))
    assert summary["joined"] == 20
    assert summary["dropped"] == 0
    assert summary["hold_s"] == 0.5
    assert isinstance(summary["server_rss_before_kib"], int)
    assert isinstance(summary["server_rss_ready_kib"], int)
    assert summary["server_kib_per_conn"] is not None
    assert summary["server_cpu_hold_s"] is not None
    assert summary["server_cpu_us_per_conn_s"] is not None
    assert summary["client_kib_per_conn"] > 0


async def test_fanout_over_websocket_counts_add_up(standin: LoadStandIn) -> None:
    cfg = config(standin, "fanout", procs=2, event="shout", count=5, msg_rate=50.0, drain=5.0)
    summary, _ = await run_quietly(cfg)
    assert summary["subscribers"] == 20
    assert summary["messages_sent"] == 5
    assert summary["expected"] == 100
    assert summary["expected"] == summary["received"] - summary["duplicates_or_reordered"] + summary["lost"]
    assert summary["lost"] == 0
    assert summary["received"] == 100
    latency = summary["latency"]
    assert latency["count"] == 100
    assert latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert summary["deliveries_per_s"] > 0
    assert summary["server_cpu_us_per_delivery"] is not None
    assert summary["windows"]
    assert sum(w["count"] for w in summary["windows"]) == 100
    assert standin.broadcasts == 5


async def test_fanout_over_http_trigger(standin: LoadStandIn) -> None:
    cfg = config(
        standin,
        "fanout",
        topic="room:h",
        count=4,
        msg_rate=50.0,
        trigger_url=f"http://127.0.0.1:{standin.http_port}/broadcast/room:h",
        trigger_body='{"content": "{marker}"}',
    )
    summary, _ = await run_quietly(cfg)
    assert summary["expected"] == 80
    assert summary["received"] == 80
    assert summary["lost"] == 0


async def test_fanout_loss_is_counted(standin: LoadStandIn) -> None:
    # "noreply" is not broadcast by the stand-in: every delivery is lost, and the run still ends by itself
    cfg = config(standin, "fanout", connections=5, event="noreply", count=3, msg_rate=100.0, drain=0.3)
    summary, _ = await run_quietly(cfg)
    assert summary["expected"] == 15
    assert summary["received"] == 0
    assert summary["lost"] == 15
    assert summary["loss_rate"] == 1


async def test_rtt_with_request_budget(standin: LoadStandIn) -> None:
    summary, _ = await run_quietly(config(standin, "rtt", connections=3, procs=2, count=60, event="ping"))
    assert summary["requests"] == summary["replies"] == 60
    assert summary["error_replies"] == 0
    assert summary["timeouts"] == 0
    assert summary["latency"]["count"] == 60
    assert summary["replies_per_s"] > 0
    assert summary["server_cpu_us_per_request"] is not None
    assert standin.requests == 60


async def test_rtt_bounded_by_duration(standin: LoadStandIn) -> None:
    summary, _ = await run_quietly(config(standin, "rtt", connections=2, duration=0.5, event="ping"))
    assert summary["replies"] > 0
    assert summary["requests"] == summary["replies"] + summary["timeouts"]
    assert summary["measure_s"] < 3


async def test_unreachable_server_fails_fast_and_stops() -> None:
    cfg = Config(
        scenario="connect", url="ws://127.0.0.1:9/socket", connections=3, connect_timeout=1.0, progress_interval=0.2
    )
    summary, _ = await run_quietly(cfg)
    assert summary["joined"] == 0
    assert summary["failed"] == 3
    assert set(summary["failures"]) <= {"os_111", "timeout"}


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="--procs 2"):
        Config(scenario="hold", connections=20_000).validate()
    with pytest.raises(ValueError, match="loopback"):
        Config(scenario="hold", url="ws://10.0.0.1:4000/socket").validate()
    with pytest.raises(ValueError, match="marker"):
        Config(scenario="fanout", payload="{}").validate()
    cfg = Config(scenario="hold", connections=10, procs=3, source_ips=2)
    assert cfg.shares() == [(0, 4), (4, 3), (7, 3)]
    assert [cfg.source_for(i) for i in range(3)] == ["127.0.0.1", "127.0.0.2", "127.0.0.1"]
    assert cfg.target() == "/socket/websocket?vsn=2.0.0"


async def test_missing_server_pid_is_a_clear_error(standin: LoadStandIn) -> None:
    with pytest.raises(LoadtestError, match="/proc/999999999"):
        await run(config(standin, "hold", server_pid=999_999_999))
