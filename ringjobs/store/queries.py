"""Loads SQL from the package's sql/ folder: named queries, the schema, the migrations."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _read(name: str) -> str:
    return resources.files("ringjobs.store").joinpath("sql", name).read_text()


@cache
def queries() -> dict[str, str]:
    """Every `-- name: X` block of queries.sql, keyed by X."""
    text = _read("queries.sql")
    parts = _NAME_LINE.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def schema() -> str:
    return _read("schema.sql")


def migrations() -> list[tuple[int, str]]:
    """(version, script) for every migrations/NNNN_*.sql, in order."""
    folder = resources.files("ringjobs.store").joinpath("sql", "migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)
