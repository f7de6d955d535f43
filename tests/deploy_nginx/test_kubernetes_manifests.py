"""deploy/kubernetes/*.yaml parse, and say what the drain needs (probes, grace, preStop, one node per pod).

PyYAML is not a dependency of whispr: the manifests are parsed with it when the venv has it, else
with the system python3's (Debian python3-yaml), else the test is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from whispr.config import Settings
from whispr.gateway.drain import drain_config

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
_DUMP = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))"


def _load(path: Path) -> list[dict[str, Any]]:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        system = shutil.which("python3", path="/usr/bin:/bin")
        if system is None or subprocess.run([system, "-c", "import yaml"], capture_output=True).returncode != 0:
            pytest.skip("PyYAML is not installed (pip install pyyaml, or apt-get install python3-yaml)")
        out = subprocess.run([system, "-c", _DUMP, str(path)], capture_output=True, text=True, check=True).stdout
        return json.loads(out)  # type: ignore[no-any-return]
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _all() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in _load(path):
            docs[doc["kind"]] = doc
    return docs


def test_every_manifest_parses_and_the_kustomization_lists_them() -> None:
    docs = _all()
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= set(
        docs
    )
    listed = set(docs["Kustomization"]["resources"])
    assert listed == {p.name for p in MANIFESTS.glob("*.yaml")} - {
        "kustomization.yaml",
        "prometheus-adapter-rules.yaml",
    }


def test_the_deployment_drains_within_its_termination_grace() -> None:
    docs = _all()
    config = next(d for d in (_load(MANIFESTS / "configmap.yaml")) if d["metadata"]["name"] == "whispr")["data"]
    settings = Settings(shutdown_grace=float(config["WHISPR_SHUTDOWN_GRACE"]))
    drain = drain_config(settings, env={"WHISPR_DRAIN_WINDOW": config["WHISPR_DRAIN_WINDOW"]})  # fits the grace
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace >= drain.total
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "--workers" not in container["command"]  # one node per pod
    assert "kill -TERM 1" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert container["resources"]["requests"]["cpu"] == "1"
    assert {e["name"] for e in container["env"]} == {"WHISPR_NODE_ID"}
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = docs[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind


def test_the_hpa_scales_on_an_exported_metric() -> None:
    hpa = _all()["HorizontalPodAutoscaler"]["spec"]
    names = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert names == ["whispr_connections_active"]
    source = (ROOT / "whispr" / "observability" / "metrics.py").read_text()
    assert '"whispr_connections_active"' in source
    assert hpa["behavior"]["scaleDown"]["policies"][0]["value"] == 1  # one pod's drain at a time
