"""Introspection: ``which_children()`` / ``count_children()`` records and a printable tree dump."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .spec import Restart, Shutdown, ShutdownPolicy

__all__ = ["ChildCounts", "ChildInfo", "Inspectable", "format_tree"]


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One child as ``which_children()`` sees it (OTP ``{Id, Child, Type, Modules}``).

    ``status`` is ``starting`` (before ``task_status.started()``), ``running``, ``stopping`` or
    ``not_running`` (a transient child that exited normally). ``value`` is what the child passed to
    ``started()``; a nested supervisor passes itself. ``restarts`` counts this child's restarts in
    the supervisor's current run.
    """

    id: Hashable
    status: str
    value: object
    restart: Restart
    shutdown: ShutdownPolicy
    restarts: int


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """OTP ``count_children/1``: specs known, children running, and of those how many are supervisors."""

    specs: int
    active: int
    supervisors: int
    workers: int


@runtime_checkable
class Inspectable(Protocol):
    """What ``format_tree`` needs: ``Supervisor`` and ``DynamicSupervisor`` provide it."""

    name: str

    def which_children(self) -> list[ChildInfo]: ...

    def summary(self) -> str: ...

    def lists_children(self) -> bool: ...


def count(children: list[ChildInfo], specs: int) -> ChildCounts:
    active = [c for c in children if c.status in ("starting", "running", "stopping")]
    supervisors = sum(1 for c in active if isinstance(c.value, Inspectable))
    return ChildCounts(specs=specs, active=len(active), supervisors=supervisors, workers=len(active) - supervisors)


def _line(info: ChildInfo) -> str:
    shutdown = info.shutdown.value if isinstance(info.shutdown, Shutdown) else f"{info.shutdown:g}s"
    return f"{info.id}  {info.status}  {info.restart.value}  shutdown={shutdown}  restarts={info.restarts}"


def format_tree(root: Inspectable) -> str:
    """Render the tree under ``root``, one line per child, nested supervisors indented.

    A ``DynamicSupervisor`` is summarised (how many children of which kind), not listed.
    Not blocking; safe to call from any task of the same Trio run, e.g. a ``/debug`` handler.
    """
    lines = [root.summary()]

    def walk(node: Inspectable, prefix: str) -> None:
        if not node.lists_children():
            return
        children = node.which_children()
        for index, info in enumerate(children):
            last = index == len(children) - 1
            text = _line(info)
            nested = info.value if isinstance(info.value, Inspectable) and info.status != "not_running" else None
            if nested is not None:
                text += f"  ── {nested.summary()}"
            lines.append(prefix + ("└─ " if last else "├─ ") + text)
            if nested is not None:
                walk(nested, prefix + ("   " if last else "│  "))

    walk(root, "")
    return "\n".join(lines)
