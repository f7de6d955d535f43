"""deploy/prometheus and deploy/grafana agree with promtool and with the metrics whispr exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.observability.scrape import emit_every_event, parse
from whispr.observability.health import CheckState, ReadinessReport
from whispr.observability.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "whispr.json"

# Series Prometheus itself adds to every target.
SCRAPE_SERIES = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary; skipped outside CI when absent, a failure in CI (env CI set)."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI: apt-get install prometheus")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Every sample name `Metrics` renders once each event was emitted and readiness observed."""
    metrics = Metrics("n1", max_connections=100, handler_id="test.deploy")
    try:
        emit_every_event()
        metrics.observe_readiness(ReadinessReport(checks=(CheckState("store", True, ""),), draining=False))
        body, _ = metrics.render()
    finally:
        metrics.detach()
    return {name for name, _ in parse(body.decode())}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, matchers, ranges and grouping removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr))
    return names - PROMQL_WORDS


def alert_exprs() -> dict[str, str]:
    """alert name -> expr, read from alerts.yml (block scalars included) without a YAML library."""
    exprs: dict[str, str] = {}
    lines = (PROMETHEUS / "alerts.yml").read_text().splitlines()
    for i, line in enumerate(lines):
        if match := re.match(r"\s*- alert: (\w+)", line):
            name = match.group(1)
        elif match := re.match(r"(\s*)expr: ?(.*)", line):
            indent, head = len(match.group(1)), match.group(2)
            body = [] if head in ("|", ">") else [head]
            for follower in lines[i + 1 :]:
                if follower.strip() and len(follower) - len(follower.lstrip()) <= indent:
                    break
                body.append(follower.strip())
            exprs[name] = " ".join(body).strip()
    return exprs


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (node, le) (rate(a_bucket{x="y z"}[5m]))) / on() group_left() count(up == 1)'
    )
    assert metric_names(expr) == {"a_bucket", "up"}


def test_alert_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid(promtool: str) -> None:
    result = run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scrape_config_is_valid(promtool: str) -> None:
    result = run(promtool, "check", "config", "prometheus-kubernetes.yml")
    output = result.stdout + result.stderr
    if "field kubernetes_sd_configs not found" in output:
        # Debian builds Prometheus without Kubernetes discovery: that field is the only error allowed.
        assert output.count("FAILED") == 1, output
        assert len(re.findall(r"line \d+:", output)) == 1, output
        return
    assert result.returncode == 0, output


def test_spec_alerts_have_unit_tests() -> None:
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    for alert in ("WhisprNodeDown", "WhisprHighErrorRate", "WhisprHighDeliveryLatency", "WhisprConnectionsNearLimit"):
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels" in tests, alert


def test_every_alert_uses_exposed_metrics(exposed: set[str]) -> None:
    exprs = alert_exprs()
    assert len(exprs) == (PROMETHEUS / "alerts.yml").read_text().count("- alert:")
    for alert, expr in exprs.items():
        names = metric_names(expr)
        assert names, f"{alert}: no metric in {expr!r}"
        assert names <= exposed | SCRAPE_SERIES, f"{alert}: unknown {names - exposed - SCRAPE_SERIES}"


def test_every_dashboard_query_uses_exposed_metrics_and_the_node_variable(exposed: set[str]) -> None:
    exprs = list(dashboard_exprs())
    assert len(exprs) >= 30
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= exposed, f"{title}: unknown {names - exposed}"
        assert expr.count('node=~"$node"') == len(re.findall(r"\b(?:whispr|process)_\w+\{", expr)), title


def test_dashboard_node_variable_queries_an_exposed_metric(exposed: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    [node] = [v for v in dashboard["templating"]["list"] if v["name"] == "node"]
    match = re.fullmatch(r"label_values\((\w+), node\)", node["query"]["query"])
    assert match
    assert match.group(1) in exposed
    assert dashboard["uid"]
    assert dashboard["title"]


def test_dashboard_covers_every_whispr_family(exposed: set[str]) -> None:
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    family = re.compile(r"_(bucket|count|sum)$")
    assert {family.sub("", n) for n in exposed if n.startswith("whispr_")} <= {family.sub("", n) for n in used}


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$node", ".*")
        rules += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(concrete)}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(rules) + "\n")
    result = run(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_runbook_section() -> None:
    operations = (DEPLOY / "OPERATIONS.md").read_text()
    for alert in alert_exprs():
        assert f"\n### {alert}\n" in operations, alert
        assert f'runbook: "deploy/OPERATIONS.md#{alert.lower()}"' in (PROMETHEUS / "alerts.yml").read_text(), alert
