"""Named SQL blocks loaded once from ``queries/*.sql``.

A block starts with ``-- name: some_name`` and runs to the next one. Values are only
ever bound parameters; nothing is formatted into these strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources

import orjson

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.end() : end].strip()
        name = m.group(1)
        if name in blocks:
            raise ValueError(f"query {name} defined twice")
        if not body:
            raise ValueError(f"query {name} is empty")
        blocks[name] = body
    return blocks


@cache
def queries() -> dict[str, str]:
    """Every named query of every file in ``store/queries``."""
    out: dict[str, str] = {}
    folder = resources.files("stockkeeper.store") / "queries"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, body in parse(entry.read_text(encoding="utf-8")).items():
                if name in out:
                    raise ValueError(f"query {name} defined in two files")
                out[name] = body
    return out


def q(name: str) -> str:
    """The SQL text of query ``name``; a KeyError names a query that does not exist."""
    return queries()[name]


def rows_param(rows: Iterable[Sequence[object]]) -> str:
    """Rows for a bulk statement as one parameter: a JSON array of arrays, read in SQL
    with ``jsonb_array_elements($n::text::jsonb)`` and ``e->>i`` casts, in the rows'
    order. asyncpg encodes an array parameter element by element, with an abstract
    base class check on each (about 0.6 µs an element: most of the client's CPU for a
    statement of 500 SKUs × 3 channels × 10 columns); orjson writes this in one call
    (D-421). Values: str, int, bool, None, aware datetimes (RFC 3339)."""
    return orjson.dumps(list(rows)).decode()
