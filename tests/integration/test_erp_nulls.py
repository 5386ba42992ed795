"""The ERP keyset poller over a view with NULLs in it, as real ERPs have: a NULL location
(the default location), a NULL sku (a bad row) and a NULL last_modified, at page
boundaries. Against the sandbox ERP's database, with a view of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from stockkeeper.config import ErpConnectorConfig
from stockkeeper.connectors.erp import Position, page_query
from stockkeeper.workers.pollers import ErpPoller
from stockkeeper_sandbox.erp import ErpSandbox
from tests.integration.test_pollers import container_with, queued_levels, sqlalchemy_url

# The sandbox's rows, shown with NULLs: warehouse 'default' as a NULL location, the SKU
# 'NO-SKU' as a NULL sku, the warehouse 'NO-TIME' as a NULL last_modified.
NULLABLE_VIEW = """
CREATE VIEW stock_changes_nullable AS
    SELECT NULLIF(sku, 'NO-SKU') AS sku,
           NULLIF(warehouse, 'default') AS location,
           qty_on_hand AS on_hand, unit_price AS price,
           CASE WHEN warehouse = 'NO-TIME' THEN NULL ELSE last_modified END AS last_modified
    FROM erp_item;
GRANT SELECT ON stock_changes_nullable TO erp_reader;
"""


async def test_nulls_at_page_boundaries_skip_nothing_and_read_nothing_twice(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    conn = await asyncpg.connect(erp.url)
    try:
        await conn.execute(NULLABLE_VIEW)
    finally:
        await conn.close()
    at = datetime(2030, 1, 1, tzinfo=UTC)
    for sku, warehouse in [
        ("A", "WH-B"),
        ("A", "default"),  # NULL: PostgreSQL sorts it after WH-B, and "> 'WH-B'" is not true
        ("B", "WH-A"),
        ("B", "WH-C"),
        ("NO-SKU", "WH-A"),  # a bad row: refused once, never a cursor that skips others
        ("C", "NO-TIME"),  # no time: not placeable on the cursor
    ]:
        await erp.set(sku, 1, at=at, warehouse=warehouse)
    await erp.set("D", 2, at=at + timedelta(seconds=1), warehouse="WH-A")
    cfg = {
        "id": "erp-nulls",
        "type": "erp",
        "dsn": sqlalchemy_url(erp.reader_url),
        "view": "stock_changes_nullable",
        "page_size": 1,  # a boundary after every row
    }
    c = await container_with(config, clock, cfg)
    try:
        (settings,) = c.settings.connectors_of(ErpConnectorConfig)
        poller = ErpPoller(c, settings)
        try:
            for _ in range(20):
                if not await poller.poll_once():
                    break
            else:
                raise AssertionError("the poller never caught up")
            assert not await poller.poll_once()  # caught up: nothing again
        finally:
            await poller.close()
        got = await queued_levels(c)
        async with c.pool.acquire() as db:
            errors = [r["error"] for r in await db.fetch("SELECT error FROM dead_letter")]
    finally:
        await c.close()
    assert sorted(got) == [
        ("A", "WH-B", 1),
        ("A", "default", 1),
        ("B", "WH-A", 1),
        ("B", "WH-C", 1),
        ("D", "WH-A", 2),
    ]
    assert len(errors) == 1  # the NULL sku, once
    assert "sku" in errors[0]


def test_the_keys_are_null_free_and_bound() -> None:
    after = Position(datetime(2030, 1, 1, tzinfo=UTC), "", "")
    sql = str(page_query("stock_changes", after, 10))
    assert sql.count("coalesce") >= 4  # sku and location, in the order and the comparison
    assert "last_modified IS NOT NULL" in sql
    assert "''" not in sql  # '' is a bound value too
