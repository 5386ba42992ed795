"""The admin lists read their indexes on tables big enough for the planner to care
(the fill of tests/integration/test_explain.py: 20k reservations, 2000 SKUs, 20k
batches), with the planner free to choose."""

from __future__ import annotations

from datetime import UTC, datetime

from stockkeeper.bootstrap import Container
from stockkeeper.store.listing import PREFIX_END
from stockkeeper.store.sql import q
from tests.integration.test_explain import assert_uses_index, explain, filled

__all__ = ["filled"]  # the fixture, shared

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def test_the_sku_search_is_a_range_of_the_bytewise_index(filled: Container) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    async with filled.pool.acquire() as conn:
        args = ("S-01", "S-01" + PREFIX_END, "", False, False, now, 51)
        plan = await explain(conn, q("list_skus"), *args)
        assert_uses_index(plan, "sku", "sku_bytewise")
        rows = await conn.fetch(q("list_skus"), *args)
    assert [r["sku"] for r in rows] == [f"S-01{i:02d}" for i in range(51)]
    assert {r["on_hand"] for r in rows} == {50}  # 10 batches of 5


async def test_reservation_lists_use_their_indexes(filled: Container) -> None:
    async with filled.pool.acquire() as conn:
        plan = await explain(conn, q("list_reservations_by_status"), "PENDING", 0, 101)
        assert_uses_index(plan, "reservation", "reservation_status")
        soon = datetime(2030, 1, 2, tzinfo=UTC)
        for sku in (None, "S-0100"):
            plan = await explain(conn, q("list_reservations_expiring"), soon, EPOCH, 0, 101, sku)
            assert_uses_index(plan, "reservation", "reservation_pending_due")


async def test_a_channels_unsettled_skus_use_their_partial_index(filled: Container) -> None:
    async with filled.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO channel_sync_state (channel, sku, desired_version, pushed_version, status)"
            " SELECT 'shop', sku, 2, CASE WHEN right(sku, 2) = '00' THEN 1 ELSE 2 END, 'SYNCED'"
            " FROM sku"
        )
        await conn.execute("ANALYZE channel_sync_state")
        plan = await explain(conn, q("list_channel_skus"), "shop", "all", "", 101)
        assert_uses_index(plan, "channel_sync_state", "channel_sync_unsettled")
        rows = await conn.fetch(q("list_channel_skus"), "shop", "all", "", 101)
    assert len(rows) == 20  # one SKU in a hundred is behind
