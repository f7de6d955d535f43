"""Latency histograms and the /proc readers."""

from __future__ import annotations

import math
import os

from hypothesis import given
from hypothesis import strategies as st

from loadtest.stats import Histogram, Windows, proc_cpu_seconds, proc_rss_kib

samples = st.lists(st.floats(min_value=0.0, max_value=1e8, allow_nan=False), min_size=1, max_size=300)


def exact(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


@given(samples)
def test_percentiles_within_two_percent(values: list[float]) -> None:
    h = Histogram()
    for v in values:
        h.add(v)
    for p in (50, 90, 99):
        got, want = h.percentile(p), exact(values, p)
        assert got is not None
        assert abs(got - want) <= max(0.021 * want, 1.0)
    assert h.percentile(100) == max(values)
    assert h.count == len(values)


@given(samples, samples)
def test_merge_equals_one_histogram_and_survives_json(a: list[float], b: list[float]) -> None:
    ha, hb, hall = Histogram(), Histogram(), Histogram()
    for v in a:
        ha.add(v)
        hall.add(v)
    for v in b:
        hb.add(v)
        hall.add(v)
    merged = Histogram.from_json(ha.to_json())
    merged.merge(Histogram.from_json(hb.to_json()))
    assert merged.counts == hall.counts
    assert merged.summary_ms() == hall.summary_ms()


def test_empty_histogram_summary() -> None:
    assert Histogram().summary_ms() == {
        "count": 0,
        "mean_ms": None,
        "p50_ms": None,
        "p90_ms": None,
        "p99_ms": None,
        "max_ms": None,
    }


def test_windows_group_by_second() -> None:
    w = Windows()
    w.add(100.2, 1000.0)
    w.add(100.9, 3000.0)
    w.add(101.0, 5000.0)
    w2 = Windows.from_json(w.to_json())
    assert sorted(w2.by_second) == [100, 101]
    assert w2.by_second[100].count == 2
    assert w2.by_second[101].max == 5000.0


def test_proc_readers_on_this_process() -> None:
    assert proc_rss_kib(os.getpid()) > 1000
    before = proc_cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))  # burn a little CPU
    assert proc_cpu_seconds(os.getpid()) >= before
