"""RestartIntensity: OTP's sliding window, against a brute-force model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisors import RestartIntensity


def test_one_in_five_seconds() -> None:
    window = RestartIntensity(1, 5)
    assert window.record(0.0)
    assert window.record(5.5)  # the restart at 0 left the window
    assert not window.record(10.5)  # 5.5 is exactly `period` ago: still in (OTP: R >= Now - Period)


def test_zero_intensity_allows_no_restart() -> None:
    assert not RestartIntensity(0, 5).record(0.0)


def test_len_counts_the_window() -> None:
    window = RestartIntensity(3, 10)
    for now in (0.0, 1.0, 2.0, 11.5):
        window.record(now)
    assert len(window) == 2


@given(
    intensity=st.integers(0, 5),
    period=st.integers(1, 20),
    gaps=st.lists(st.integers(0, 12), max_size=40),
)
def test_matches_brute_force(intensity: int, period: int, gaps: list[int]) -> None:
    """Restart i is allowed iff at most `intensity` restarts j <= i satisfy t_i - t_j <= period."""
    window = RestartIntensity(intensity, period)
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap / 4  # quarters: exact in binary floating point, so no rounding at the edge
        times.append(now)
        in_window = sum(1 for then in times if now - then <= period)
        assert window.record(now) == (in_window <= intensity)
        assert len(window) == in_window
