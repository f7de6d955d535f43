"""Versioned schema migrations, one folder of SQL files per dialect (`sqlite/`, `postgres/`).

A file is named `NNNN_description.sql`; NNNN is its version. Versions only grow and a released file
is never edited: a schema change is a new file. Each backend applies, in one transaction per file,
the versions above the highest one recorded in its `schema_migrations` table, and records them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """The migrations of `dialect` ("sqlite" or "postgres"), by increasing version.

    Raises:
        ValueError: a file name does not match `NNNN_description.sql`, or two files share a version.
    """
    found: dict[int, Migration] = {}
    for path in sorted((Path(__file__).parent / dialect).glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_description.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two {dialect} migrations have version {version}")
        found[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]
