"""The ingest worker on a real database: newer-wins absolute levels, sales once per
transaction id, shortfalls, dead letters for bad records, pricing."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.audit import audit
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Adjustment, Receipt, SkuStock
from stockkeeper.workers.ingest import ingest_handler

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ERP = {"id": "erp-main", "type": "erp", "dsn": "postgresql+asyncpg://erp@127.0.0.1/erp"}
SHOP = {"id": "shop", "type": "webhook", "secret_env": "SHOP_SECRET"}


@pytest.fixture
async def ingesting(
    config: dict[str, Any], clock: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Container]:
    monkeypatch.setenv("SHOP_SECRET", "s3cret")
    erp = {**ERP, "pricing": {"markup_percent": 25, "round_to": "0.05"}}
    strict_shop = {**SHOP, "id": "strict", "auto_create_skus": False}
    c = await build(
        Settings.model_validate({**config, "connectors": [erp, SHOP, strict_shop]}), clock=clock
    )
    yield c
    await c.close()


def level(sku: str, on_hand: int, at: datetime, **kw: Any) -> dict[str, Any]:
    return {"sku": sku, "on_hand": on_hand, "source_updated_at": at.isoformat(), **kw}


def sale(tid: str, sku: str, delta: int, source: str = "shop") -> dict[str, Any]:
    return {"transaction_id": tid, "sku": sku, "delta": delta, "source": source}


async def deliver(
    c: Container,
    connector: str,
    levels: list[Any] = (),
    sales: list[Any] = (),  # type: ignore[assignment]
) -> None:
    env = Envelope.new(
        f"ingest.{connector}",
        {"connector": connector, "levels": list(levels), "sales": list(sales)},
        occurred_at=c.clock(),
    )
    handle = ingest_handler(c.ingest)
    async with c.pool.acquire() as conn, conn.transaction():
        await handle(conn, env)


async def on_hand(c: Container, sku: str) -> SkuStock:
    (lv,) = await c.stock.get_many([sku])
    return lv


async def assert_clean(c: Container) -> None:
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.summary()


async def test_a_thousand_levels_per_sku_shuffled_end_at_the_newest(ingesting: Container) -> None:
    c = ingesting
    rng = random.Random(42)
    skus = [f"SKU-{i}" for i in range(5)]
    updates = [
        level(sku, rng.randint(0, 500), T0 + timedelta(seconds=n))
        for sku in skus
        for n in range(1000)
    ]
    newest = {sku: updates[i * 1000 + 999]["on_hand"] for i, sku in enumerate(skus)}
    rng.shuffle(updates)
    messages = [updates[i : i + 50] for i in range(0, len(updates), 50)]

    async def worker(mine: list[list[dict[str, Any]]]) -> None:
        for m in mine:
            await deliver(c, "erp-main", m)

    # Four consumers at once, as four replicas of the ingest worker would be.
    await asyncio.gather(*(worker(messages[k::4]) for k in range(4)))
    for sku in skus:
        assert (await on_hand(c, sku)).on_hand == newest[sku], sku
    await assert_clean(c)
    # Older data delivered again later changes nothing.
    await deliver(c, "erp-main", [level(skus[0], 999_999, T0)])
    assert (await on_hand(c, skus[0])).on_hand == newest[skus[0]]


async def test_a_level_is_per_location_and_the_guard_is_per_connector(
    ingesting: Container,
) -> None:
    c = ingesting
    await deliver(c, "erp-main", [level("A", 10, T0 + timedelta(1), location="WH-2")])
    await deliver(c, "erp-main", [level("A", 4, T0)])  # another location: its own clock
    a = await on_hand(c, "A")
    assert a.on_hand == 14
    await deliver(c, "shop", [level("A", 7, T0)])  # another connector: its own clock
    assert (await on_hand(c, "A")).on_hand == 17
    await assert_clean(c)


async def test_a_lower_level_takes_from_the_unlotted_batch_then_the_latest_lots(
    ingesting: Container,
) -> None:
    c = ingesting
    await c.stock.receive(Receipt("M", 5, "r-1", None, "EARLY", T0 + timedelta(days=30)))
    await c.stock.receive(Receipt("M", 5, "r-2", None, "LATE", T0 + timedelta(days=90)))
    await deliver(c, "erp-main", [level("M", 12, T0)])  # +2 on a new unlotted batch
    await deliver(c, "erp-main", [level("M", 4, T0 + timedelta(1))])  # -8
    m = await on_hand(c, "M")
    by_lot = {b.lot_number: b.on_hand for b in m.batches}
    assert by_lot == {None: 0, "LATE": 0, "EARLY": 4}
    await assert_clean(c)


async def test_a_sale_takes_effect_once_per_transaction_id(ingesting: Container) -> None:
    c = ingesting
    await c.stock.receive(Receipt("B", 10, "r-1", None, None, None))
    for _ in range(3):
        await deliver(c, "shop", sales=[sale("t-1", "B", -3)])
    await deliver(c, "shop", sales=[sale("t-2", "B", -1), sale("t-2", "B", -1)])
    assert (await on_hand(c, "B")).on_hand == 6
    await deliver(c, "shop", sales=[sale("t-1", "B", -3, source="amazon")])  # another source
    assert (await on_hand(c, "B")).on_hand == 3
    async with c.pool.acquire() as conn:
        kinds = await conn.fetch(
            "SELECT entry_type, sum(d_on_hand) AS n FROM inventory_ledger GROUP BY 1 ORDER BY 1"
        )
    assert [(k["entry_type"], k["n"]) for k in kinds] == [("RECEIPT", 10), ("SALE", -7)]
    await deliver(c, "shop", sales=[sale("t-3", "B", 2)])  # a return
    assert (await on_hand(c, "B")).on_hand == 5
    await assert_clean(c)


async def test_a_sale_beyond_what_is_available_is_a_shortfall_not_a_refusal(
    ingesting: Container,
) -> None:
    c = ingesting
    await c.stock.receive(Receipt("C", 5, "r-1", None, None, None))
    await c.reservations.reserve(ReserveRequest("o-1", (OrderLine("C", 4),)))
    await deliver(c, "shop", sales=[sale("t-1", "C", -3)])  # 1 available, 3 sold
    lv = await on_hand(c, "C")
    assert (lv.on_hand, lv.reserved, lv.available, lv.shortfall) == (2, 4, 0, 2)
    await deliver(c, "shop", sales=[sale("t-2", "C", -5)])  # more than is there at all
    lv = await on_hand(c, "C")
    # Booked whole: the 3 units on_hand could not cover are oversold, owed like a promise.
    assert (lv.on_hand, lv.oversold, lv.shortfall) == (0, 3, 7)
    async with c.pool.acquire() as conn:
        unbooked = await conn.fetchval(
            "SELECT unbooked FROM ingested_sale WHERE transaction_id = 't-2'"
        )
        shortfall_events = await conn.fetchval(
            "SELECT count(*) FROM domain_event WHERE event_type = 'inventory.shortfall'"
        )
    assert unbooked == 3
    assert shortfall_events == 2
    m = c.metrics.registry.get_sample_value
    assert m("stockkeeper_ingest_unbooked_sale_units_total", {"connector": "shop"}) == 3
    assert m("stockkeeper_oversell_total", {"source": "shop"}) == 2 + 5
    await assert_clean(c)


async def test_a_level_below_what_is_held_back_is_no_shortfall_unless_a_promise_is_uncovered(
    ingesting: Container,
) -> None:
    c = ingesting
    # D: 4 of 5 held back, nothing promised. E: the same, and the last unit reserved.
    for sku in ("D", "E"):
        await c.stock.receive(Receipt(sku, 5, f"r-{sku}", None, None, None))
        await c.stock.adjust(Adjustment(sku, "unavailable", "quarantine", f"q-{sku}", set=4))
    await c.reservations.reserve(ReserveRequest("o-1", (OrderLine("E", 1),)))
    # The ERP now has 2 on hand of each: fewer than are held back (D-475).
    await deliver(c, "erp-main", [level("D", 2, T0), level("E", 2, T0)])
    d, e = await c.stock.get_many(["D", "E"])
    assert (d.on_hand, d.unavailable, d.available, d.shortfall) == (2, 4, 0, 0)
    assert (e.on_hand, e.unavailable, e.reserved, e.available, e.shortfall) == (2, 4, 1, 0, 1)
    async with c.pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT sku, payload FROM domain_event WHERE event_type = 'inventory.shortfall'"
        )
    assert [(r["sku"], r["payload"]["shortfall"]) for r in events] == [("E", 1)]
    m = c.metrics.registry.get_sample_value
    assert m("stockkeeper_oversell_total", {"source": "erp-main"}) == 1
    await assert_clean(c)


async def test_bad_records_become_dead_letters_and_the_rest_flows_on(
    ingesting: Container,
) -> None:
    c = ingesting
    await deliver(
        c,
        "erp-main",
        [
            level("OK", 3, T0),
            level("NEG", -1, T0),
            level("PRICE", 1, T0, price="-2.00"),
            {"sku": "NOTIME", "on_hand": 1, "source_updated_at": "2030-01-01T00:00:00"},
            {"sku": "STR", "on_hand": "7", "source_updated_at": T0.isoformat()},
        ],
        [sale("t-1", "OK", 0)],
    )
    assert (await on_hand(c, "OK")).on_hand == 3
    assert await c.stock.get_many(["NEG", "PRICE", "NOTIME", "STR"]) == []
    async with c.pool.acquire() as conn:
        dead = await conn.fetch("SELECT queue, error FROM dead_letter ORDER BY id")
    assert [d["queue"] for d in dead] == ["inventory.ingest"] * 5
    errors = " | ".join(d["error"] for d in dead)
    for reason in ("on_hand", "price", "timezone", "valid integer", "delta: must not be 0"):
        assert reason in errors, errors


async def test_a_level_stamped_far_ahead_of_our_clock_is_refused_not_kept_as_the_truth(
    ingesting: Container,
) -> None:
    c = ingesting
    now = c.clock()
    # A source whose clock jumped (or a typo, 2099 for 2029): kept, it would be newer
    # than every true level until 2099, and each of them dropped as older.
    await deliver(c, "erp-main", [level("F", 99, datetime(2099, 1, 1, tzinfo=UTC))])
    await deliver(c, "erp-main", [level("F", 5, now - timedelta(minutes=1))])
    assert (await on_hand(c, "F")).on_hand == 5
    # A few hours ahead is an ERP's local time read as UTC: applied (max_ahead_s, a day).
    await deliver(c, "erp-main", [level("F", 6, now + timedelta(hours=14))])
    assert (await on_hand(c, "F")).on_hand == 6
    async with c.pool.acquire() as conn:
        (dead,) = await conn.fetch("SELECT error FROM dead_letter")
    assert "2099-01-01" in dead["error"]
    assert "ahead of our clock" in dead["error"]
    m = c.metrics.registry.get_sample_value
    assert (
        m("stockkeeper_ingest_records_total", {"connector": "erp-main", "outcome": "refused"}) == 1
    )
    await assert_clean(c)


async def test_with_auto_create_off_an_unknown_sku_is_a_dead_letter(
    ingesting: Container,
) -> None:
    c = ingesting
    await c.stock.receive(Receipt("KNOWN", 1, "r-1", None, None, None))
    await deliver(c, "strict", [level("KNOWN", 5, T0), level("NEW", 5, T0)])
    assert (await on_hand(c, "KNOWN")).on_hand == 5
    assert await c.stock.get_many(["NEW"]) == []
    async with c.pool.acquire() as conn:
        (dead,) = await conn.fetch("SELECT error FROM dead_letter")
    assert "unknown sku NEW" in dead["error"]


async def test_prices_follow_the_connectors_rules_and_the_newest_wins(
    ingesting: Container,
) -> None:
    c = ingesting
    await deliver(c, "erp-main", [level("P", 1, T0 + timedelta(1), price="10.00")])
    await deliver(c, "erp-main", [level("P", 1, T0, price="99.00")])  # older: dropped
    async with c.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT source_price, price FROM sku_price WHERE sku = 'P'")
    assert row is not None
    assert (row["source_price"], row["price"]) == (Decimal("10.0000"), Decimal("12.5000"))


async def test_an_ingest_message_that_is_not_one_is_a_permanent_error(
    ingesting: Container,
) -> None:
    from stockkeeper.messaging.consumer import PermanentError

    env = Envelope.new(
        "ingest.erp-main", {"levels": []}, occurred_at=ingesting.clock(), id_=uuid.uuid4()
    )
    async with ingesting.pool.acquire() as conn, conn.transaction():
        with pytest.raises(PermanentError, match="connector"):
            await ingest_handler(ingesting.ingest)(conn, env)


async def replay(c: Container, dead_id: int) -> Envelope:
    """Replay a dead letter as an operator does, and read what reached the ingest queue
    as the consumer runner reads it (a body that is no envelope stops there)."""
    await (await c.operations()).replay(dead_id, "ops")
    async with c.pool.acquire() as conn:
        body = await conn.fetchval(
            "SELECT body FROM queue_message WHERE (headers->>'x-replayed-from')::bigint = $1",
            dead_id,
        )
    return Envelope.parse(bytes(body))


async def handle(c: Container, env: Envelope) -> None:
    async with c.pool.acquire() as conn, conn.transaction():
        await ingest_handler(c.ingest)(conn, env)


async def test_a_record_refused_for_its_unknown_sku_is_applied_when_replayed_after_it_exists(
    ingesting: Container,
) -> None:
    c = ingesting
    await deliver(c, "strict", [level("LATE", 5, T0)], [sale("t-9", "LATE", -2, "strict")])
    async with c.pool.acquire() as conn:
        dead = [r["id"] for r in await conn.fetch("SELECT id FROM dead_letter ORDER BY id")]
    assert len(dead) == 2
    await c.stock.receive(Receipt("LATE", 1, "r-late", None, None, None))  # the SKU now exists

    for dead_id in dead:
        await handle(c, await replay(c, dead_id))

    assert (await on_hand(c, "LATE")).on_hand == 5 - 2
    async with c.pool.acquire() as conn:
        statuses = await conn.fetch("SELECT status FROM dead_letter ORDER BY id")
    assert [r["status"] for r in statuses] == ["REPLAYED", "REPLAYED"]  # no new refusal
    await assert_clean(c)


async def test_a_bad_record_replayed_is_refused_again_with_its_reason(
    ingesting: Container,
) -> None:
    c = ingesting
    await deliver(c, "shop", [level("NEG", -1, T0)])
    async with c.pool.acquire() as conn:
        first = await conn.fetchrow("SELECT id, error FROM dead_letter")
    assert first is not None

    await handle(c, await replay(c, first["id"]))

    async with c.pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, error FROM dead_letter ORDER BY id")
    assert [(r["status"], r["error"]) for r in rows] == [
        ("REPLAYED", first["error"]),
        ("DEAD", first["error"]),
    ]
    assert await c.stock.get_many(["NEG"]) == []
