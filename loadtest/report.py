"""Results: JSON lines, the human table, `--compare`, and the optional latency plot."""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from loadtest.config import Config


def write_jsonl(path: str, cfg: Config, summary: dict[str, Any]) -> None:
    """One `run` line (the configuration), one `window` line per second, one `summary` line."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"type": "run", "scenario": cfg.scenario, "at": started, "config": _config(cfg)}) + "\n")
        for w in summary.get("windows", []):
            f.write(json.dumps({"type": "window", **w}) + "\n")
        f.write(json.dumps({k: v for k, v in summary.items() if k != "windows"}) + "\n")


def _config(cfg: Config) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(cfg.to_json())
    for secret in ("token", "auth_token", "token_secret"):
        if d.get(secret):
            d[secret] = "<redacted>"
    if len(d.get("conversations") or []) > 3:
        d["conversations"] = [*d["conversations"][:3], f"... {len(d['conversations'])} in all"]
    d["trigger_headers"] = [h.split(":", 1)[0] + ": <redacted>" for h in d.get("trigger_headers", [])]
    return d


def read_summary(path: str) -> dict[str, Any]:
    last: dict[str, Any] | None = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec: dict[str, Any] = json.loads(line)
            if rec.get("type") == "summary":
                last = rec
    if last is None:
        raise ValueError(f"{path}: no summary line")
    return last


def read_windows(path: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec: dict[str, Any] = json.loads(line)
            if rec.get("type") == "window":
                out.append(rec)
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if k in ("type", "windows"):
            continue
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flatten(v, name + ".")
        else:
            yield name, v


def print_table(summary: dict[str, Any], out: TextIO = sys.stdout) -> None:
    rows = [(k, _fmt(v)) for k, v in flatten(summary)]
    width = max((len(k) for k, _ in rows), default=10)
    out.write(f"{'metric':<{width}}  value\n{'-' * width}  {'-' * 12}\n")
    for k, v in rows:
        out.write(f"{k:<{width}}  {v}\n")


def compare(path_a: str, path_b: str, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    """Numeric metrics of two runs side by side with the ratio B/A. Returns the rows."""
    a, b = dict(flatten(read_summary(path_a))), dict(flatten(read_summary(path_b)))
    rows: list[dict[str, Any]] = []
    for k in [*a, *(k for k in b if k not in a)]:
        va, vb = a.get(k), b.get(k)
        if not (_num(va) or _num(vb)):
            continue
        ratio = round(vb / va, 3) if _num(va) and _num(vb) and va != 0 else None  # type: ignore[operator]
        rows.append({"metric": k, "a": va, "b": vb, "ratio": ratio})
    width = max((len(r["metric"]) for r in rows), default=10)
    out.write(f"A = {path_a}\nB = {path_b}\n")
    out.write(f"{'metric':<{width}}  {'A':>14}  {'B':>14}  {'B/A':>8}\n")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        out.write(f"{r['metric']:<{width}}  {_fmt(r['a']):>14}  {_fmt(r['b']):>14}  {ratio:>8}\n")
    return rows


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.4g}"
    return str(v)


def plot(windows: list[dict[str, Any]], path: str, title: str) -> bool:
    """Latency percentiles per second to a PNG. False (and a note on stderr) without matplotlib."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        sys.stderr.write("loadtest: matplotlib is not installed; skipping --plot\n")
        return False
    if not windows:
        sys.stderr.write("loadtest: no latency samples; skipping --plot\n")
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    t = [w["t"] for w in windows]
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        ax.plot(t, [w[key] for w in windows], marker=".", label=key.removesuffix("_ms"))
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
