"""Latency histograms (mergeable across worker processes) and /proc readers for the server under test."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

# Log-linear buckets: 2 % relative width, from 1 µs up. Percentiles are exact to about 1 %.
_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)


def _bucket(us: float) -> int:
    return 0 if us < 1.0 else int(math.log(us) / _LOG_GROWTH) + 1


def _bucket_value(b: int) -> float:
    # geometric middle of the bucket
    return 0.5 if b == 0 else _GROWTH ** (b - 0.5)


@dataclass
class Histogram:
    """Latency samples in microseconds."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = 0.0

    def add(self, us: float) -> None:
        b = _bucket(us)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.count += 1
        self.total += us
        if us < self.min:
            self.min = us
        if us > self.max:
            self.max = us

    def merge(self, other: Histogram) -> None:
        for b, n in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float | None:
        if self.count == 0:
            return None
        if p >= 100:
            return self.max
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(max(_bucket_value(b), self.min), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float | int | None]:
        """count, mean, p50, p90, p99, max in milliseconds."""

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v / 1000.0, 3)

        return {
            "count": self.count,
            "mean_ms": ms(self.total / self.count) if self.count else None,
            "p50_ms": ms(self.percentile(50)),
            "p90_ms": ms(self.percentile(90)),
            "p99_ms": ms(self.percentile(99)),
            "max_ms": ms(self.max) if self.count else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {str(k): v for k, v in self.counts.items()},
            "count": self.count,
            "total": self.total,
            "min": None if self.count == 0 else self.min,
            "max": self.max,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Histogram:
        h = cls({int(k): int(v) for k, v in d["counts"].items()}, int(d["count"]), float(d["total"]))
        h.min = math.inf if d["min"] is None else float(d["min"])
        h.max = float(d["max"])
        return h


class Windows:
    """One histogram per whole second of wall-clock time (for latency over time)."""

    def __init__(self) -> None:
        self.by_second: dict[int, Histogram] = {}

    def add(self, wall_s: float, us: float) -> None:
        sec = int(wall_s)
        h = self.by_second.get(sec)
        if h is None:
            h = self.by_second[sec] = Histogram()
        h.add(us)

    def merge(self, other: Windows) -> None:
        for sec, h in other.by_second.items():
            mine = self.by_second.get(sec)
            if mine is None:
                self.by_second[sec] = mine = Histogram()
            mine.merge(h)

    def to_json(self) -> dict[str, Any]:
        return {str(k): h.to_json() for k, h in self.by_second.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Windows:
        w = cls()
        w.by_second = {int(k): Histogram.from_json(v) for k, v in d.items()}
        return w


# --- /proc ------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds (resolution 1/CLK_TCK, 10 ms here)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_runqueue_wait_seconds(pid: int) -> float:
    """Time the threads of `pid` spent runnable but waiting for a CPU (schedstat field 2), in seconds.

    Tells whether the server under test was starved by other load on its core (shared machines).
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


@dataclass
class ServerProbe:
    """Reads CPU and RSS of the server process, or nothing when no pid was given."""

    pid: int | None

    def cpu(self) -> float | None:
        return None if self.pid is None else proc_cpu_seconds(self.pid)

    def rss(self) -> int | None:
        return None if self.pid is None else proc_rss_kib(self.pid)

    def wait(self) -> float | None:
        if self.pid is None:
            return None
        try:
            return proc_runqueue_wait_seconds(self.pid)
        except OSError:
            return None
