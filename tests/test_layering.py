"""The import rules of ../shared/design/architecture.md, checked on the source.

- `whispr/protocol/` is sans-I/O: no trio, sockets, redis, psycopg, sqlite3 or asyncio.
- Only `whispr/adapters/` imports redis, psycopg, psycopg_pool, trio_asyncio or sqlite3.
- Only `whispr/observability/` imports prometheus_client (protocol and channels emit telemetry events).
- `supervisors/` imports only trio and the standard library, and never whispr.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = {"redis", "psycopg", "psycopg_pool", "trio_asyncio", "sqlite3"}
SANS_IO_FORBIDDEN = IO_LIBRARIES | {
    "trio",
    "trio_websocket",
    "socket",
    "asyncio",
    "ssl",
    "selectors",
    "prometheus_client",
}


def imported_roots(path: Path) -> set[str]:
    """Top-level module names a file imports (absolute imports only; relative ones stay in the package)."""
    tree = ast.parse(path.read_text(), str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_sources_exist() -> None:
    assert sources("whispr")
    assert sources("supervisors")


@pytest.mark.parametrize("path", sources("whispr/protocol"), ids=str)
def test_protocol_is_sans_io(path: Path) -> None:
    assert imported_roots(path) & SANS_IO_FORBIDDEN == set()


@pytest.mark.parametrize("path", sources("whispr"), ids=str)
def test_only_adapters_import_io_libraries(path: Path) -> None:
    if "adapters" in path.relative_to(ROOT).parts:
        return
    assert imported_roots(path) & IO_LIBRARIES == set()


@pytest.mark.parametrize("path", sources("whispr"), ids=str)
def test_only_observability_imports_prometheus(path: Path) -> None:
    if "observability" in path.relative_to(ROOT).parts:
        return
    assert "prometheus_client" not in imported_roots(path)


@pytest.mark.parametrize("path", sources("supervisors"), ids=str)
def test_supervisors_import_only_trio_and_stdlib(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | {"trio", "supervisors", "__future__"}
    assert imported_roots(path) - allowed == set()


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom redis.asyncio import Redis\nfrom . import sibling\n")
    assert imported_roots(bad) == {"trio", "redis"}
