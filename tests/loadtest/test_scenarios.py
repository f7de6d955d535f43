"""Each load scenario, briefly, against the in-process stand-in (the workers are real subprocesses)."""

from __future__ import annotations

import io
import json
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


async def test_node_ports_spread_connections_round_robin(standin: LoadStandIn, nursery: trio.Nursery) -> None:
    other: LoadStandIn = await nursery.start(LoadStandIn().serve)
    cfg = config(standin, "connect", connections=21, node_ports=[other.ws_port])
    summary, _ = await run_quietly(cfg)
    assert summary["joined"] == 21
    assert (standin.connects, other.connects) == (11, 10)  # i even -> --url's port, i odd -> the other node


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


SECRET = "loadtest-secret-of-at-least-32-bytes!!"


async def test_chat_counts_acks_deliveries_and_per_user_tokens(standin: LoadStandIn) -> None:
    cfg = config(
        standin,
        "chat",
        connections=40,
        procs=2,
        source_ips=300,
        source_base=250,
        token_secret=SECRET,
        user="cu{i}",
        device="cd{i}",
        group_size=10,
        msg_rate=80.0,
        duration=1.0,
        drain=3.0,
    )
    summary, progress = await run_quietly(cfg)
    assert summary["joined"] == 40
    assert summary["conversations"] == 4
    assert summary["sent"] == summary["acked"] > 0
    assert summary["send_errors"] == summary["unacked"] == 0
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["conv_seq_gaps"] == 0
    assert summary["delivered"] == 10 * summary["acked"]
    assert summary["user_deliveries"] == 10 * summary["acked"]
    assert summary["delivery_all_members_latency"]["count"] == summary["acked"]
    assert summary["ack_latency"]["p50_ms"] <= summary["ack_latency"]["p99_ms"]
    assert summary["acked_per_s"] is not None
    assert summary["server_cpu_us_per_ack"] is not None
    assert sorted(standin.subs) == sorted((f"cu{i}", f"cd{i}") for i in range(40))  # one token per user
    assert "[chat]" in progress


async def test_reconnect_rejoins_and_catches_up_without_gaps(standin: LoadStandIn) -> None:
    cfg = config(
        standin,
        "reconnect",
        connections=20,
        token_secret=SECRET,
        user="ru{i}",
        device="rd{i}",
        group_size=10,
        drop_fraction=0.5,
        msg_rate=40.0,
        duration=1.0,
        drain=3.0,
    )
    summary, _ = await run_quietly(cfg)
    assert summary["dropped"] == 10
    assert summary["rejoined"] == summary["caught_up"] == 10
    assert summary["not_rejoined"] == summary["missing_conv"] == summary["missing_user"] == 0
    assert summary["acked"] > 0
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["replayed"] == 5 * summary["acked"]  # each dropped member gets each outage message once
    assert summary["catchup_time"]["count"] == 10
    assert summary["all_caught_up_s"] is not None
    assert len(standin.subs) == 30  # 20 connects, then 10 reconnects


def test_chat_configuration() -> None:
    with pytest.raises(ValueError, match="--token-secret"):
        Config(scenario="chat", connections=20).validate()
    with pytest.raises(ValueError, match="multiple of the group size"):
        Config(scenario="chat", connections=25, token_secret=SECRET).validate()
    with pytest.raises(ValueError, match="split evenly"):
        Config(scenario="chat", connections=30, procs=2, token_secret=SECRET).validate()
    cfg = Config(scenario="chat", connections=20, token_secret=SECRET, user="u{i}", conversations=["a", "b"])
    assert cfg.topics_for(13) == ["user:u13", "conversation:b"]
    assert json.loads(cfg.for_worker())["token_secret"] is None
    cfg = Config(scenario="hold", source_ips=1000, source_base=300)
    assert cfg.source_for(5) == "127.0.1.50"
    assert cfg.source_for(1005) == "127.0.1.50"
    assert Config(scenario="rtt", topic="conversation:{conv}", group_size=1, conversations=["x", "y"]).topic_for(1) == (
        "conversation:y"
    )
