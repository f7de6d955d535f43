"""Child specs and supervisor flags are validated when built, with errors naming the problem."""

from __future__ import annotations

import math

import pytest

from supervisors import (
    ChildSpec,
    InvalidChildSpec,
    InvalidSupervisorFlags,
    Restart,
    Shutdown,
    Strategy,
    SupervisorFlags,
)

from .children import idle


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"id": ""}, "missing_id"),
        ({"id": None}, "missing_id"),
        ({"id": 3}, "invalid_id"),
        ({"start": "idle"}, "invalid_start"),
        ({"args": ["x"]}, "invalid_args"),
        ({"restart": "permanent"}, "invalid_restart"),
        ({"shutdown": -1}, "negative_shutdown"),
        ({"shutdown": math.nan}, "invalid_shutdown"),
        ({"shutdown": math.inf}, "invalid_shutdown"),
        ({"shutdown": True}, "invalid_shutdown"),
        ({"shutdown": "infinity"}, "invalid_shutdown"),
    ],
)
def test_invalid_child_spec(kwargs: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {"id": "db", "start": idle} | kwargs
    with pytest.raises(InvalidChildSpec) as caught:
        ChildSpec(**fields)  # type: ignore[arg-type]
    assert caught.value.reason == reason
    value = next(iter(kwargs.values()))
    assert caught.value.value is value
    assert str(caught.value) == f"invalid child spec: {reason} (got {value!r})"


def test_child_spec_defaults_are_otps() -> None:
    spec = ChildSpec("db", idle)
    assert (spec.args, spec.restart, spec.shutdown) == ((), Restart.PERMANENT, 5.0)


@pytest.mark.parametrize("shutdown", [0, 0.5, 30, Shutdown.BRUTAL_KILL, Shutdown.INFINITY])
def test_valid_shutdown_policies(shutdown: float | Shutdown) -> None:
    assert ChildSpec("db", idle, shutdown=shutdown).shutdown == shutdown


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"strategy": "one_for_one"}, "invalid_strategy"),
        ({"intensity": -1}, "invalid_intensity"),
        ({"intensity": 1.5}, "invalid_intensity"),
        ({"intensity": True}, "invalid_intensity"),
        ({"period": 0}, "invalid_period"),
        ({"period": math.inf}, "invalid_period"),
    ],
)
def test_invalid_supervisor_flags(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidSupervisorFlags) as caught:
        SupervisorFlags(**kwargs)  # type: ignore[arg-type]
    assert caught.value.reason == reason


def test_supervisor_flags_defaults_are_otps() -> None:
    assert SupervisorFlags() == SupervisorFlags(Strategy.ONE_FOR_ONE, intensity=1, period=5.0)
