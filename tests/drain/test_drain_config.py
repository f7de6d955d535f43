"""The drain's schedule and its fit inside the shutdown grace (whispr.gateway.drain)."""

from __future__ import annotations

import pytest

from whispr.config import ConfigError, Settings
from whispr.gateway.drain import DrainConfig, drain_config


def test_batches_are_spread_evenly_over_the_window_and_cover_every_socket() -> None:
    config = DrainConfig(window=10.0, min_interval=0.05)
    schedule = config.schedule(1000)
    assert len(schedule) == 200  # one batch per 50 ms at most
    assert sum(size for _, size in schedule) == 1000
    assert {size for _, size in schedule} == {5}
    offsets = [offset for offset, _ in schedule]
    assert offsets[0] == 0.0
    assert offsets[-1] < 10.0
    assert offsets == sorted(offsets)


def test_few_sockets_get_one_batch_each_and_uneven_counts_differ_by_one() -> None:
    assert DrainConfig(window=1.0).schedule(4) == [(0.0, 1), (0.25, 1), (0.5, 1), (0.75, 1)]
    sizes = [size for _, size in DrainConfig(window=0.1, min_interval=0.05).schedule(5)]
    assert sizes == [3, 2]
    assert DrainConfig(window=0.0).schedule(3) == [(0.0, 3)]
    assert DrainConfig().schedule(0) == []


def test_the_default_window_is_ten_seconds_and_shrinks_with_a_short_grace() -> None:
    config = drain_config(Settings(), env={})
    assert (config.window, config.flush_timeout) == (10.0, 6.0)
    short = drain_config(Settings(shutdown_grace=6.0), env={})
    assert short.window == pytest.approx(2.0)
    assert short.total + min(5.0, 6.0 / 4) <= 6.0


def test_an_explicit_window_must_fit_inside_the_grace() -> None:
    assert drain_config(Settings(shutdown_grace=30.0), env={"WHISPR_DRAIN_WINDOW": "19"}).window == 19.0
    with pytest.raises(ConfigError, match="must fit inside WHISPR_SHUTDOWN_GRACE"):
        drain_config(Settings(shutdown_grace=30.0), env={"WHISPR_DRAIN_WINDOW": "20"})
    with pytest.raises(ConfigError, match="must be a number"):
        drain_config(Settings(), env={"WHISPR_DRAIN_WINDOW": "soon"})
    with pytest.raises(ConfigError, match="non-negative"):
        drain_config(Settings(), env={"WHISPR_DRAIN_WINDOW": "-1"})
