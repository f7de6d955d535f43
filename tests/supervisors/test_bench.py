"""DynamicSupervisor per-child cost on the connect path: prints figures, asserts no timing."""

from __future__ import annotations

import pytest

from supervisors import _bench


@pytest.mark.slow
def test_print_per_child_cost(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _bench.report(1_000)  # `python -m supervisors._bench` runs the 10,000-child figures
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert [line.split("  ")[0].strip() for line in lines] == [
        "bare trio task (baseline)",
        "await start_child",
        "start_child_nowait",
    ]
