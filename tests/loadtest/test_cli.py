"""`python -m loadtest` end to end: JSON lines, the table, --compare and --plot."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import pytest
import trio

from loadtest.report import compare, plot, read_summary, read_windows
from tests.loadtest.standin import LoadStandIn

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_cli_rtt_writes_jsonl_and_table(nursery: trio.Nursery, tmp_path: Path) -> None:
    standin: LoadStandIn = await nursery.start(LoadStandIn().serve)
    out = tmp_path / "rtt.jsonl"
    cmd = [sys.executable, "-m", "loadtest", "rtt", "--url", standin.url, "-n", "2", "--count", "40"]
    cmd += ["--token", "secret-token", "--server-pid", str(os.getpid()), "--out", str(out)]
    cmd += ["--progress-interval", "0.2"]
    with trio.fail_after(60):
        proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    table = proc.stdout.decode()
    assert "replies" in table
    assert "latency.p99_ms" in table
    assert "[rtt]" in proc.stderr.decode()  # progress on stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["type"] == "run"
    assert records[0]["config"]["token"] == "<redacted>"
    assert "secret-token" not in out.read_text()
    assert records[-1]["type"] == "summary"
    assert records[-1]["replies"] == 40
    assert all(r["type"] == "window" for r in records[1:-1])


def _summary_file(path: Path, replies_per_s: float, p99: float) -> None:
    lines = [
        {"type": "run", "scenario": "rtt", "config": {}},
        {"type": "window", "t": 0, "count": 3, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": p99, "max_ms": p99 + 1},
        {"type": "summary", "scenario": "rtt", "replies_per_s": replies_per_s, "latency": {"p99_ms": p99}, "ok": True},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_compare_prints_ratios(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _summary_file(a, 1000.0, 4.0)
    _summary_file(b, 1500.0, 2.0)
    buf = io.StringIO()
    rows = compare(str(a), str(b), buf)
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["replies_per_s"]["ratio"] == 1.5
    assert by_metric["latency.p99_ms"]["ratio"] == 0.5
    assert "ok" not in by_metric
    assert "scenario" not in by_metric
    text = buf.getvalue()
    assert "1.500" in text
    assert "0.500" in text
    assert read_summary(str(a))["replies_per_s"] == 1000.0
    assert read_windows(str(a))[0]["p99_ms"] == 4.0


async def test_compare_from_the_command_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _summary_file(a, 1000.0, 4.0)
    _summary_file(b, 500.0, 8.0)
    cmd = [sys.executable, "-m", "loadtest", "--compare", str(a), str(b)]
    with trio.fail_after(30):
        proc = await trio.run_process(cmd, capture_stdout=True, check=False)
    assert proc.returncode == 0
    line = next(x for x in proc.stdout.decode().splitlines() if x.startswith("replies_per_s"))
    assert line.split()[-1] == "0.500"


def test_plot_writes_png_or_skips_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "lat.png"
    windows = [{"t": t, "count": 5, "p50_ms": 1.0 + t, "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0} for t in range(3)]
    made = plot(windows, str(target), "test")
    if importlib.util.find_spec("matplotlib") is None:
        assert made is False
        assert not target.exists()
        assert "matplotlib is not installed" in capsys.readouterr().err
    else:
        assert made is True
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest.cli import main

    with pytest.raises(SystemExit) as info:
        main(["hold", "-n", "40000", "--procs", "2"])
    assert info.value.code == 2
    assert "--procs 3" in capsys.readouterr().err


def test_secret_file_mints_per_user_tokens_and_is_redacted(tmp_path: Path) -> None:
    import jwt

    from loadtest.cli import build_parser, config_from_args
    from loadtest.report import write_jsonl
    from loadtest.worker import Worker

    secret = "s" * 40
    (tmp_path / "secret").write_text(secret + "\n")
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"group_size": 10, "users": [], "conversations": ["c0", "c1"]}))
    ns = build_parser().parse_args(
        ["chat", "-n", "20", "--secret-file", str(tmp_path / "secret"), "--groups-file", str(groups), "--user", "u{i}"]
    )
    cfg = config_from_args(ns)
    assert cfg.token_secret == secret
    assert cfg.topics_for(15) == ["user:u15", "conversation:c1"]
    token = Worker(cfg, 0, 0, 20).token_for(7)
    assert token is not None
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert (claims["sub"], claims["device_id"]) == ("u7", "lt-d7")
    assert claims["exp"] > claims["iat"]
    out = tmp_path / "run.jsonl"
    write_jsonl(str(out), cfg, {"type": "summary"})
    assert secret not in out.read_text()
    assert secret not in cfg.for_worker()
