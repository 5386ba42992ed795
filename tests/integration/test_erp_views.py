"""The ERP poller over views shaped as real ERPs shape them: quantities in a decimal
column, and a view that lost a column (the failure shows in /admin/status, not only in
the log). Against the sandbox ERP's database, with views of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from stockkeeper.config import ErpConnectorConfig
from stockkeeper.services.ingest import connector_status
from stockkeeper.workers.pollers import ErpPoller
from stockkeeper_sandbox.erp import ErpSandbox
from tests.integration.test_pollers import container_with, queued_levels, sqlalchemy_url

# Quantities as SAP or Dynamics keep them: numeric with decimals (5 units: 5.000). The
# SKU 'HALF' shows half its units: 2.500 of a thing is not a whole number.
DECIMAL_VIEW = """
CREATE VIEW stock_changes_decimal AS
    SELECT sku, warehouse AS location,
           (CASE WHEN sku = 'HALF' THEN qty_on_hand / 2.0 ELSE qty_on_hand END)::numeric(15, 3)
               AS on_hand,
           unit_price AS price, last_modified
    FROM erp_item;
GRANT SELECT ON stock_changes_decimal TO erp_reader;
"""

# The ERP's next release renamed a column of the view.
RENAMED_VIEW = """
CREATE VIEW stock_changes_renamed AS
    SELECT sku, warehouse AS location, qty_on_hand AS quantity, unit_price AS price,
           last_modified
    FROM erp_item;
GRANT SELECT ON stock_changes_renamed TO erp_reader;
"""


# SKU and warehouse codes in fixed-width CHAR columns (SAP's MATNR, many SQL Server
# schemas): the database pads them with spaces to the column's width.
CHAR_VIEW = """
CREATE VIEW stock_changes_char AS
    SELECT sku::char(20) AS sku, warehouse::char(10) AS location,
           qty_on_hand AS on_hand, unit_price AS price, last_modified
    FROM erp_item;
GRANT SELECT ON stock_changes_char TO erp_reader;
"""


# Local times without a zone, as many ERPs keep them (read as UTC, D-052), on an ERP
# server whose sessions run in Europe/Berlin (its TimeZone setting).
NAIVE_VIEW = """
CREATE VIEW stock_changes_naive AS
    SELECT sku, warehouse AS location, qty_on_hand AS on_hand, unit_price AS price,
           (last_modified AT TIME ZONE 'UTC') AS last_modified
    FROM erp_item;
GRANT SELECT ON stock_changes_naive TO erp_reader;
"""


async def create_view(erp: ErpSandbox, sql: str) -> None:
    conn = await asyncpg.connect(erp.url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_whole_quantities_in_a_decimal_column_are_levels(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    await create_view(erp, DECIMAL_VIEW)
    at = datetime(2030, 1, 1, tzinfo=UTC)
    await erp.set("BOLT", 5, at=at, warehouse="WH-A")
    await erp.set("NUT", 0, at=at, warehouse="WH-A")
    await erp.set("HALF", 5, at=at, warehouse="WH-A")
    cfg = {
        "id": "erp-dec",
        "type": "erp",
        "dsn": sqlalchemy_url(erp.reader_url),
        "view": "stock_changes_decimal",
    }
    c = await container_with(config, clock, cfg)
    try:
        poller = ErpPoller(c, c.settings.connectors_of(ErpConnectorConfig)[0])
        try:
            await poller.poll_once()
        finally:
            await poller.close()
        got = await queued_levels(c)
        async with c.pool.acquire() as conn:
            errors = [r["error"] for r in await conn.fetch("SELECT error FROM dead_letter")]
    finally:
        await c.close()
    assert sorted(got) == [("BOLT", "WH-A", 5), ("NUT", "WH-A", 0)]
    assert len(errors) == 1  # 2.500 units: refused, with its reason
    assert "on_hand" in errors[0]


async def test_a_view_that_lost_a_column_shows_as_the_connectors_last_failure(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    await create_view(erp, RENAMED_VIEW)
    await erp.set("BOLT", 5, at=datetime(2030, 1, 1, tzinfo=UTC), warehouse="WH-A")
    cfg = {
        "id": "erp-ren",
        "type": "erp",
        "dsn": sqlalchemy_url(erp.reader_url),
        "view": "stock_changes_renamed",
    }
    c = await container_with(config, clock, cfg)
    try:
        poller = ErpPoller(c, c.settings.connectors_of(ErpConnectorConfig)[0])
        try:
            assert not await poller.tick()
        finally:
            await poller.close()
        async with c.pool.acquire() as conn:
            (status,) = await connector_status(conn, ["erp-ren"])
        assert await queued_levels(c) == []
    finally:
        await c.close()
    assert status.last_failure is not None
    message = status.last_failure.message
    # The view and the database's own words, not SQLAlchemy's statement dump.
    assert "stock_changes_renamed" in message
    assert "on_hand does not exist" in message
    assert "SELECT" not in message
    assert status.last_modified is None  # the cursor did not move


async def test_codes_in_fixed_width_char_columns_lose_their_padding(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    await create_view(erp, CHAR_VIEW)
    at = datetime(2030, 1, 1, tzinfo=UTC)
    # Ties on one timestamp, read a row a page: the keyset works on the padded values.
    for sku, warehouse in [("BOLT", "WH-A"), ("BOLT", "WH-B"), ("NUT", "WH-A"), ("W", "WH-A")]:
        await erp.set(sku, len(sku), at=at, warehouse=warehouse)
    cfg = {
        "id": "erp-char",
        "type": "erp",
        "dsn": sqlalchemy_url(erp.reader_url),
        "view": "stock_changes_char",
        "page_size": 1,
    }
    c = await container_with(config, clock, cfg)
    try:
        poller = ErpPoller(c, c.settings.connectors_of(ErpConnectorConfig)[0])
        try:
            for _ in range(10):
                if not await poller.poll_once():
                    break
            assert not await poller.poll_once()
        finally:
            await poller.close()
        got = await queued_levels(c)
        async with c.pool.acquire() as conn:
            errors = [r["error"] for r in await conn.fetch("SELECT error FROM dead_letter")]
    finally:
        await c.close()
    assert errors == []
    assert sorted(got) == [
        ("BOLT", "WH-A", 4),
        ("BOLT", "WH-B", 4),
        ("NUT", "WH-A", 3),
        ("W", "WH-A", 1),
    ]


async def test_times_without_a_zone_are_compared_as_they_are_kept_whatever_the_erps_zone(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    await create_view(erp, NAIVE_VIEW)
    conn = await asyncpg.connect(erp.url)
    try:  # this ERP database only (dropped after the test), never the server's settings
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'Europe/Berlin'")
    finally:
        await conn.close()
    at = datetime(2030, 1, 1, 10, tzinfo=UTC)
    # Each row within the hour after the one before: compared as Berlin times against a
    # cursor kept in UTC, every one of them looked older than the cursor.
    for i, sku in enumerate(["A", "B", "C", "D"]):
        await erp.set(sku, i + 1, at=at + timedelta(minutes=10 * i), warehouse="WH-A")
    cfg = {
        "id": "erp-naive",
        "type": "erp",
        "dsn": sqlalchemy_url(erp.reader_url),
        "view": "stock_changes_naive",
        "page_size": 1,
    }
    c = await container_with(config, clock, cfg)
    try:
        for _ in range(2):  # and again from the saved cursor, as after a restart
            poller = ErpPoller(c, c.settings.connectors_of(ErpConnectorConfig)[0])
            try:
                for _ in range(3):
                    await poller.poll_once()
            finally:
                await poller.close()
        got = await queued_levels(c)
    finally:
        await c.close()
    assert got == [("A", "WH-A", 1), ("B", "WH-A", 2), ("C", "WH-A", 3), ("D", "WH-A", 4)]


ITEM = (
    "INSERT INTO erp_item (sku, warehouse, qty_on_hand, unit_price, last_modified) "
    "VALUES ($1, 'WH-A', $2, NULL, $3)"
)


async def test_a_row_committed_after_a_later_stamped_one_is_read_once_it_settles(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    """D-493: an ERP transaction stamps its row, another stamps a later one and commits
    first. Read at once, the cursor passes the first row while it is uncommitted and
    never comes back for it. With ``settle_ms`` the poller reads only rows stamped that
    long ago, so both are read, in order, once they settle."""
    now = clock()
    slow, quick = await asyncpg.connect(erp.url), await asyncpg.connect(erp.url)
    cfg = {"id": "erp", "type": "erp", "dsn": sqlalchemy_url(erp.reader_url), "settle_ms": 5000}
    c = await container_with(config, clock, cfg)
    poller = ErpPoller(c, c.settings.connectors_of(ErpConnectorConfig)[0])
    try:
        open_tx = slow.transaction()
        await open_tx.start()
        await slow.execute(ITEM, "FIRST", 1, now - timedelta(seconds=3))
        await quick.execute(ITEM, "SECOND", 2, now - timedelta(seconds=2))
        await poller.poll_once()  # neither has settled: nothing read, no cursor saved
        await open_tx.commit()
        clock.advance(5)
        await poller.poll_once()
        await poller.poll_once()
        got = await queued_levels(c)
    finally:
        await poller.close()
        await c.close()
        await slow.close()
        await quick.close()
    assert got == [("FIRST", "WH-A", 1), ("SECOND", "WH-A", 2)]


async def test_settle_ms_holds_back_only_rows_stamped_within_it(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    now = clock()
    await erp.set("OLD", 1, at=now - timedelta(seconds=6), warehouse="WH-A")
    await erp.set("NEW", 2, at=now - timedelta(seconds=4), warehouse="WH-A")
    cfg = {"id": "erp", "type": "erp", "dsn": sqlalchemy_url(erp.reader_url), "settle_ms": 5000}
    c = await container_with(config, clock, cfg)
    poller = ErpPoller(c, c.settings.connectors_of(ErpConnectorConfig)[0])
    try:
        await poller.poll_once()
        first = await queued_levels(c)
        clock.advance(1)
        await poller.poll_once()
        second = await queued_levels(c)
    finally:
        await poller.close()
        await c.close()
    assert first == [("OLD", "WH-A", 1)]
    assert second == [("OLD", "WH-A", 1), ("NEW", "WH-A", 2)]
