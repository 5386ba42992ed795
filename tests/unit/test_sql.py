"""Named SQL blocks: they load, their names are unique, and every one the code asks for exists."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stockkeeper.store import sql
from stockkeeper.store.sql import parse, q, queries, rows_param

SRC = Path(sql.__file__).resolve().parents[1]  # src/stockkeeper
QUERY_DIR = SRC / "store" / "queries"
NAME_LINE = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)
# q("name") and, for the conditional form, every literal inside the q(...) call:
# q("lock_batches" if lock else "read_batches").
Q_SIMPLE = re.compile(r'\bq\("([a-z_0-9]+)"\)')
Q_CALL = re.compile(r"\bq\(([^()]*)\)")
LITERAL = re.compile(r'"([a-z_0-9]+)"')


def referenced() -> dict[str, list[str]]:
    """query name -> the source files that ask for it."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        names = set(Q_SIMPLE.findall(text))
        for call in Q_CALL.findall(text):
            names.update(LITERAL.findall(call))
        for name in names:
            found.setdefault(name, []).append(str(path.relative_to(SRC)))
    return found


def test_there_are_query_files() -> None:
    files = sorted(QUERY_DIR.glob("*.sql"))
    assert len(files) >= 5
    assert sum(len(NAME_LINE.findall(f.read_text(encoding="utf-8"))) for f in files) >= 30


@pytest.mark.parametrize("path", sorted(QUERY_DIR.glob("*.sql")), ids=lambda p: p.name)
def test_each_file_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    blocks = parse(text)
    # Every "-- name:" line became a block: none malformed, none swallowed by another.
    assert list(blocks) == NAME_LINE.findall(text)
    for name, body in blocks.items():
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name)
        assert body.strip()
        assert "-- name:" not in body
        # A statement, not only comments.
        code = "\n".join(ln for ln in body.splitlines() if not ln.lstrip().startswith("--"))
        assert re.search(r"\b(SELECT|INSERT|UPDATE|DELETE|WITH)\b", code), name


def test_names_are_unique_across_files() -> None:
    seen: dict[str, str] = {}
    for path in sorted(QUERY_DIR.glob("*.sql")):
        for name in NAME_LINE.findall(path.read_text(encoding="utf-8")):
            assert name not in seen, f"{name} in {path.name} and {seen[name]}"
            seen[name] = path.name
    assert set(queries()) == set(seen)


def test_every_referenced_query_exists() -> None:
    refs = referenced()
    assert len(refs) >= 20, "the scan of src/ found suspiciously few q(...) calls"
    assert {"lock_batches", "read_batches", "lock_reservation", "get_reservation"} <= set(refs)
    missing = {name: files for name, files in refs.items() if name not in queries()}
    assert not missing, f"q() names with no query: {missing}"


def test_q_returns_the_block_and_refuses_unknown_names() -> None:
    assert q("audit_counts").startswith("SELECT")
    with pytest.raises(KeyError):
        q("no_such_query")


def test_parse_rejects_duplicates_and_empty_blocks() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="empty"):
        parse("-- name: a\n\n-- name: b\nSELECT 2;\n")
    assert parse("-- heading\n-- name: a\nSELECT 1;\n\n-- name: b\nSELECT 2;\n") == {
        "a": "SELECT 1;",
        "b": "SELECT 2;",
    }


def test_rows_param_is_one_json_array_of_the_rows_in_order() -> None:
    at = datetime(2026, 12, 3, 19, 30, 5, 123456, tzinfo=UTC)
    text = rows_param(iter([("SKU-2", 7, True, None, at), ("SKU-1", -1, False, 'x"y', at)]))
    assert json.loads(text) == [
        ["SKU-2", 7, True, None, "2026-12-03T19:30:05.123456+00:00"],
        ["SKU-1", -1, False, 'x"y', "2026-12-03T19:30:05.123456+00:00"],
    ]
    assert rows_param([]) == "[]"
