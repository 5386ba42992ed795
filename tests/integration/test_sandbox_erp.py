"""The sandbox ERP in a real PostgreSQL database: schema, reader role, seed, changes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from stockkeeper_sandbox.erp import (
    SEED_START,
    ErpSandbox,
    create_erp,
    drop_erp,
    reader_url,
    simulate,
)

# The poller's query: a keyset on (last_modified, sku, location), served by the index.
KEYSET_PAGE = """
SELECT sku, location, on_hand, price, last_modified
FROM stock_changes
WHERE (last_modified, sku, location) > ($1, $2, $3)
ORDER BY last_modified, sku, location
LIMIT $4
"""
BEFORE_ALL = (datetime(1970, 1, 1, tzinfo=UTC), "", "")


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def keyset_pages(url: str, limit: int) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[dict[str, Any]] = []
        cursor = BEFORE_ALL
        while page := await conn.fetch(KEYSET_PAGE, *cursor, limit):
            rows += [dict(r) for r in page]
            last = page[-1]
            cursor = (last["last_modified"], last["sku"], last["location"])
        return rows
    finally:
        await conn.close()


async def test_schema_is_an_item_table_read_through_a_view(erp: ErpSandbox) -> None:
    columns = await fetch(
        erp.url,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'stock_changes' ORDER BY ordinal_position",
    )
    assert [(c["column_name"], c["data_type"]) for c in columns] == [
        ("sku", "text"),
        ("location", "text"),
        ("on_hand", "integer"),
        ("price", "numeric"),
        ("last_modified", "timestamp with time zone"),
    ]
    index = await fetch(erp.url, "SELECT indexdef FROM pg_indexes WHERE tablename = 'erp_item'")
    assert any("(last_modified, sku, warehouse)" in i["indexdef"] for i in index)
    # The view is for reading, even by its owner.
    conn = await asyncpg.connect(erp.url)
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="read-only"):
            await conn.execute(
                "INSERT INTO stock_changes (sku, location, on_hand, last_modified) "
                "VALUES ('A', 'default', 1, now())"
            )
        # The warehouse defaults to 'default'.
        await conn.execute("INSERT INTO erp_item (sku, last_modified) VALUES ('A', now())")
        assert await conn.fetchval("SELECT location FROM stock_changes") == "default"
    finally:
        await conn.close()


async def test_the_reader_role_reads_the_view_and_nothing_else(erp: ErpSandbox) -> None:
    await erp.set("A", 3, price="9.99")
    assert erp.reader_url == reader_url(erp.url)
    assert erp.reader_url.split("://")[1].startswith("erp_reader@")
    conn = await asyncpg.connect(erp.reader_url)
    try:
        assert await conn.fetchval("SELECT current_user") == "erp_reader"
        rows = await conn.fetch("SELECT sku, on_hand, price FROM stock_changes")
        assert [tuple(r) for r in rows] == [("A", 3, Decimal("9.99"))]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM erp_item")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE stock_changes SET on_hand = 0")
    finally:
        await conn.close()


async def test_create_again_keeps_the_data_and_drop_is_idempotent(admin_url: str) -> None:
    name = f"sk_erp_test_{uuid.uuid4().hex[:8]}"
    url = await create_erp(admin_url, name)
    try:
        await ErpSandbox(url).set("A", 1)
        assert await create_erp(admin_url, name) == url  # e.g. a second `sandbox erp` run
        assert await ErpSandbox(url).count() == 1
    finally:
        await drop_erp(admin_url, url)
    await drop_erp(admin_url, url)
    for bad in ('x"; DROP DATABASE postgres; --', "1abc", "a" * 64):
        with pytest.raises(ValueError, match="database name"):
            await create_erp(admin_url, bad)


async def test_seed_makes_groups_of_ties_and_is_deterministic(erp: ErpSandbox) -> None:
    await erp.set("LEFTOVER", 1)
    await erp.seed(1000, seed=4, ties=50)
    rows = await erp.rows()
    assert await erp.count() == len(rows) == 1000  # a seed replaces everything
    stamps = [r["last_modified"] for r in rows]
    assert len(set(stamps)) == 20
    assert all(stamps.count(s) == 50 for s in set(stamps))
    assert stamps[0] == SEED_START
    # Each group is 50 consecutive SKUs.
    assert [r["sku"] for r in rows[:50]] == [f"SKU-{i:06d}" for i in range(50)]
    assert {r["location"] for r in rows} == {"default"}
    assert all(0 <= r["on_hand"] < 1000 and r["price"] > 0 for r in rows)
    await erp.seed(1000, seed=4, ties=50)
    assert await erp.rows() == rows
    await erp.seed(1000, seed=5, ties=50)
    assert await erp.rows() != rows
    await erp.seed(3, ties=1)
    assert len({r["last_modified"] for r in await erp.rows()}) == 3
    with pytest.raises(ValueError, match="ties"):
        await erp.seed(10, ties=0)


async def test_keyset_pages_cover_every_row_once_across_ties(erp: ErpSandbox) -> None:
    await erp.seed(500, ties=50)
    # One SKU in three warehouses, changed at the same instant: (last_modified, sku)
    # alone does not tell these rows apart.
    at = datetime(2030, 1, 1, tzinfo=UTC)
    for warehouse in ("WH-A", "WH-B", "WH-C"):
        await erp.set("MULTI", 5, at=at, warehouse=warehouse)
    for limit in (1, 7, 50, 1000):
        assert await keyset_pages(erp.reader_url, limit) == await erp.rows()

    # Why the location belongs in the cursor: on (last_modified, sku) alone, a page that
    # ends inside the MULTI rows loses the rest of them.
    conn = await asyncpg.connect(erp.url)
    try:
        page = await conn.fetch(
            "SELECT last_modified, sku FROM stock_changes WHERE (last_modified, sku) > ($1, $2)"
            " ORDER BY last_modified, sku LIMIT 501",
            *BEFORE_ALL[:2],
        )
        rest = await conn.fetch(
            "SELECT sku FROM stock_changes WHERE (last_modified, sku) > ($1, $2)",
            page[-1]["last_modified"],
            page[-1]["sku"],
        )
    finally:
        await conn.close()
    assert page[-1]["sku"] == "MULTI"
    assert rest == []  # two MULTI rows skipped


async def test_the_keyset_query_runs_on_the_index(erp: ErpSandbox) -> None:
    await erp.seed(20_000, ties=50)
    plan = await fetch(
        erp.url,
        "EXPLAIN " + KEYSET_PAGE,
        SEED_START + timedelta(seconds=200),
        "SKU-010000",
        "default",
        500,
    )
    text = "\n".join(r[0] for r in plan)
    assert "erp_item_changes" in text, text
    assert "Sort" not in text, text


async def test_mutate_stamps_changes_after_everything_before(erp: ErpSandbox) -> None:
    await erp.seed(300, ties=50)
    before = {r["sku"]: r for r in await erp.rows()}
    newest = max(r["last_modified"] for r in before.values())

    changed = await erp.mutate(10, seed=1)
    assert len(changed) == len(set(changed)) == 10
    assert changed == sorted(changed)
    after = {r["sku"]: r for r in await erp.rows()}
    stamps = {after[s]["last_modified"] for s in changed}
    assert len(stamps) == 1
    assert stamps.pop() > newest
    assert all(after[s]["on_hand"] != before[s]["on_hand"] for s in changed)
    untouched = set(before) - set(changed)
    assert all(after[s] == before[s] for s in untouched)
    # The changed rows are the newest: last in keyset order, in the returned order.
    assert [r["sku"] for r in (await erp.rows())[-10:]] == changed

    newest = max(r["last_modified"] for r in after.values())
    spread = await erp.mutate(5, seed=2, same_timestamp=False)
    rows = await erp.rows()
    assert [r["sku"] for r in rows[-5:]] == spread
    stamps_list = [r["last_modified"] for r in rows[-5:]]
    assert stamps_list == sorted(set(stamps_list))
    assert stamps_list[0] > newest

    assert len(await erp.mutate(10_000, seed=3)) == 300
    assert await erp.mutate(0, seed=4) == []


async def test_mutate_is_deterministic_for_a_seed(admin_url: str) -> None:
    picks = []
    for _ in range(2):
        url = await create_erp(admin_url)
        try:
            erp = ErpSandbox(url)
            await erp.seed(200, seed=9)
            changed = await erp.mutate(7, seed=11)
            picks.append((changed, [(r["sku"], r["on_hand"]) for r in await erp.rows()]))
        finally:
            await drop_erp(admin_url, url)
    assert picks[0] == picks[1]
    empty = ErpSandbox(await create_erp(admin_url))
    try:
        assert await empty.mutate(5, seed=1) == []
    finally:
        await drop_erp(admin_url, empty.url)


async def test_set_writes_bad_data_and_keeps_or_takes_timestamps(erp: ErpSandbox) -> None:
    await erp.seed(10)
    first = await erp.set("NEW", 4)
    assert first > max(r["last_modified"] for r in (await erp.rows())[:-1])
    second = await erp.set("BAD", -5, price=Decimal("-1.50"))
    assert second > first
    await erp.set("NEW", 6, price=12)
    await erp.set("NEW", 7)  # no price given: the price stays
    old = datetime(2020, 5, 1, tzinfo=UTC)
    assert await erp.set("OLD", None, at=old) == old  # missing quantity, stamp as given
    rows = {r["sku"]: r for r in await erp.rows()}
    assert (rows["BAD"]["on_hand"], rows["BAD"]["price"]) == (-5, Decimal("-1.50"))
    assert (rows["NEW"]["on_hand"], rows["NEW"]["price"]) == (7, Decimal("12.00"))
    assert (rows["OLD"]["on_hand"], rows["OLD"]["price"]) == (None, None)
    assert (await erp.rows())[0]["sku"] == "OLD"
    assert await erp.count() == 13


async def test_simulate_seeds_once_prints_the_url_and_keeps_changing(
    admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"sk_erp_test_{uuid.uuid4().hex[:8]}"
    url = await simulate(admin_url, name, 100, 0, 5, rounds=2)
    try:
        out, err = capsys.readouterr()
        assert out == url + "\n"
        assert err.count("changed 5 rows") == 2
        erp = ErpSandbox(url)
        rows = await erp.rows()
        assert len(rows) == 100
        assert 5 <= sum(r["last_modified"] > SEED_START + timedelta(days=1) for r in rows) <= 10
        # A second run finds the rows and does not seed again.
        await erp.set("EXTRA", 1)
        assert await simulate(admin_url, name, 100, 0, 1, rounds=0) == url
        assert await erp.count() == 101
    finally:
        await drop_erp(admin_url, url)
