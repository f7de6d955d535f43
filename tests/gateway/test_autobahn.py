"""RFC 6455 conformance: the Autobahn cases 1-11 (kosoku) against the endpoint's test-only echo route.

reliability.md A1/A2: the transport profile (cap 16 MiB, 9.* performance cases included) must have
no FAILED, WRONG CODE or UNCLEAN verdict; the production profile (cap 64 KiB) fails exactly the
over-cap cases, each closed cleanly by the server with 1009. 12.* and 13.* (permessage-deflate)
are excluded: the extension is never negotiated (A3).
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from .helpers import echo_route, running_endpoint

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kosoku") is None, reason="kosoku is not installed"),
]

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}
OVER_64_KIB = {
    *(f"9.1.{i}" for i in range(2, 7)),
    *(f"9.2.{i}" for i in range(2, 7)),
    *(f"9.3.{i}" for i in range(1, 10)),
    *(f"9.4.{i}" for i in range(1, 10)),
    *(f"9.5.{i}" for i in range(1, 7)),
    *(f"9.6.{i}" for i in range(1, 7)),
}


async def _run_suite(max_message_size: int, outdir: Path) -> dict[str, dict[str, Any]]:
    async with running_endpoint(extra_websocket_routes=echo_route(max_message_size)) as (_, port):
        with trio.fail_after(150):
            await trio.run_process(
                ["kosoku", "-p", "2", "-o", str(outdir), "-x", "12.*", "-x", "13.*", f"ws://127.0.0.1:{port}/autobahn"],
                check=False,  # kosoku exits 1 when any case does not pass; the verdicts are judged below
                capture_stdout=True,
                capture_stderr=True,
            )
    return await trio.to_thread.run_sync(_read_reports, outdir)


def _read_reports(outdir: Path) -> dict[str, dict[str, Any]]:
    """kosoku's per-case reports (`<outdir>/**/<agent>_case_<id>.json`), by case id."""
    cases = {}
    for path in outdir.glob("**/*.json"):
        if path.name != "index.json":
            case = json.loads(path.read_text())
            cases[case["id"]] = case
    return cases


def _summary(cases: dict[str, dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(f"{c['behavior']}/{c['behaviorClose']}" for c in cases.values())


async def test_transport_profile_passes_cases_1_to_11(tmp_path: Path) -> None:
    cases = await _run_suite(16 * 1024 * 1024, tmp_path)
    print("Autobahn, cap 16 MiB:", dict(_summary(cases)))
    assert len(cases) == 301
    bad = {
        case_id: (c["behavior"], c["behaviorClose"])
        for case_id, c in cases.items()
        if c["behavior"] not in PASSING or c["behaviorClose"] not in PASSING_CLOSE
    }
    assert bad == {}


async def test_production_cap_fails_only_over_cap_cases_with_1009(tmp_path: Path) -> None:
    cases = await _run_suite(64 * 1024, tmp_path)
    print("Autobahn, cap 64 KiB:", dict(_summary(cases)))
    failing = {
        case_id
        for case_id, c in cases.items()
        if c["behavior"] not in PASSING or c["behaviorClose"] not in PASSING_CLOSE
    }
    assert failing == OVER_64_KIB
    assert {(cases[i]["remoteCloseCode"], cases[i]["wasClean"]) for i in failing} == {(1009, True)}
