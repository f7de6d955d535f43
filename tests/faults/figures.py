"""A fault test's figures in the form of reliability.md §2: row id, each figure with its target, pass/fail.

`Figures.check()` prints the block (pytest shows it with `-s`, and in the report of a failing test)
and then asserts every target at once, so one failed target still shows all the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Figure:
    name: str
    value: str
    target: str
    ok: bool | None  # None: reported, no target


@dataclass
class Figures:
    row: str  # reliability.md §2 row id, e.g. "E2"
    title: str
    figures: list[Figure] = field(default_factory=list)

    def at_most(self, name: str, value: float, limit: float, unit: str = "") -> None:
        self.figures.append(Figure(name, _fmt(value, unit), f"≤ {_fmt(limit, unit)}", value <= limit))

    def at_least(self, name: str, value: float, limit: float, unit: str = "") -> None:
        self.figures.append(Figure(name, _fmt(value, unit), f"≥ {_fmt(limit, unit)}", value >= limit))

    def report(self, name: str, value: float | str, unit: str = "") -> None:
        shown = value if isinstance(value, str) else _fmt(value, unit)
        self.figures.append(Figure(name, shown, "(reported)", None))

    def block(self) -> str:
        width = max(len(f.name) for f in self.figures)
        lines = [f"[{self.row}] {self.title}"]
        for f in self.figures:
            verdict = {True: "ok", False: "FAIL", None: ""}[f.ok]
            lines.append(f"  {f.name:<{width}}  {f.value:>12}  target {f.target:<14} {verdict}")
        return "\n".join(lines)

    def check(self) -> None:
        """Print the block; raise AssertionError naming every missed target."""
        text = self.block()
        print("\n" + text)
        failed = [f.name for f in self.figures if f.ok is False]
        assert not failed, f"targets missed: {failed}\n{text}"


def _fmt(value: float, unit: str) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "never"
    if isinstance(value, float):
        return f"{value:.3f}{unit}" if unit == " s" else f"{value:.1f}{unit}"
    return f"{value}{unit}"
