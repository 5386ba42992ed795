"""Bulk paths on a real database (issue 15): an ingest page applied set-based with its
bad records dead-lettered one by one, ``inventory.levels_changed`` recorded by the
propagator set-based and idempotently, bulk and single-SKU level messages in any order,
and a batch of reservations expired at once."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.events import LEVEL_CHANGED, LEVELS_CHANGED
from stockkeeper.domain.propagation import Verdict
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.audit import audit
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.ingest import ingest_handler
from stockkeeper.workers.propagator import Propagator
from tests.conftest import FakeClock

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ERP = "erp-main"
SECRET_ENV = "SK_TEST_BULK_SECRET"
CHANNELS = ("shop-a", "shop-b")
PER_MESSAGE = 500


@pytest.fixture
async def c(
    config: dict[str, Any], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Container]:
    monkeypatch.setenv(SECRET_ENV, "s3cret-for-tests")
    config["connectors"] = [
        {"id": ERP, "type": "erp", "dsn": "postgresql+asyncpg://erp@127.0.0.1/erp"},
        *(
            {
                "id": ch,
                "type": "outbound_webhook",
                "url": f"http://127.0.0.1:9/{ch}",
                "secret_env": SECRET_ENV,
            }
            for ch in CHANNELS
        ),
    ]
    config["bulk"] = {"levels_per_message": PER_MESSAGE}
    container = await build(Settings.model_validate(config), clock=clock)
    yield container
    await container.close()


def level(sku: str, on_hand: int, at: datetime) -> dict[str, Any]:
    return {"sku": sku, "on_hand": on_hand, "source_updated_at": at.isoformat()}


def sale(tid: str, sku: str, delta: int) -> dict[str, Any]:
    return {"transaction_id": tid, "sku": sku, "delta": delta, "source": "shop"}


def ingest_message(c: Container, levels: list[Any], sales: list[Any] = ()) -> Envelope:  # type: ignore[assignment]
    payload = {"connector": ERP, "levels": list(levels), "sales": list(sales)}
    return Envelope.new(f"ingest.{ERP}", payload, occurred_at=c.clock())


async def deliver(c: Container, env: Envelope) -> int:
    """Apply one ingest message as the consumer does; how many statements it ran."""
    seen: list[str] = []

    def log(record: Any) -> None:
        # Not asyncpg's own look-ups of types it has not met on this connection yet.
        if "pg_catalog" not in record.query and "'jit'" not in record.query:
            seen.append(record.query)

    async with c.pool.acquire() as conn, conn.transaction():
        conn.add_query_logger(log)
        try:
            await ingest_handler(c.ingest)(conn, env)
        finally:
            conn.remove_query_logger(log)
    return len(seen)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def assert_clean(c: Container) -> None:
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.summary()


async def level_messages(c: Container) -> list[Envelope]:
    """Every level message in the outbox, as the propagator would receive it."""
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT event_type, payload, occurred_at, source FROM domain_event "
            "WHERE event_type = ANY($1) ORDER BY id",
            [LEVEL_CHANGED, LEVELS_CHANGED],
        )
    return [
        Envelope.new(
            r["event_type"], r["payload"], occurred_at=r["occurred_at"], source=r["source"]
        )
        for r in rows
    ]


async def sync_rows(c: Container) -> dict[tuple[str, str], tuple[Any, ...]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT channel, sku, desired_version, desired_quantity, status, pending_changes "
            "FROM channel_sync_state"
        )
    return {(r["channel"], r["sku"]): tuple(r)[2:] for r in rows}


async def handle(worker: Propagator, env: Envelope) -> None:
    async with worker.pool.acquire() as conn, conn.transaction():
        await worker.handler()(conn, env)


def page(prefix: str, n: int, seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    """``n`` records: 90% levels, the rest sales of the first SKUs (some sold out, so
    booked as oversold), and one in 200 bad, interleaved at random places."""
    rng = random.Random(seed)
    good_levels = [level(f"{prefix}-{i:05}", rng.randint(0, 50), T0) for i in range(n * 9 // 10)]
    n_bad = n // 200
    good_sales = [
        sale(f"{prefix}-t-{i}", f"{prefix}-{i:05}", -1) for i in range(n - len(good_levels) - n_bad)
    ]
    records: list[tuple[str, dict[str, Any], bool]] = [("level", r, True) for r in good_levels]
    records += [("sale", r, True) for r in good_sales]
    for i in range(n_bad // 2):
        bad_level = level(f"{prefix}-BAD-{i}", -1, T0)
        bad_sale = sale(f"{prefix}-bad-{i}", f"{prefix}-00001", 0)
        records.insert(rng.randrange(len(records)), ("level", bad_level, False))
        records.insert(rng.randrange(len(records)), ("sale", bad_sale, False))
    levels = [r for kind, r, _ in records if kind == "level"]
    sales = [r for kind, r, _ in records if kind == "sale"]
    bad = [r for _, r, ok in records if not ok]
    return levels, sales, bad


def _sorted_json(values: list[Any]) -> list[bytes]:
    return sorted(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values)


async def test_a_page_of_10000_with_50_bad_records_applies_the_rest_once(c: Container) -> None:
    levels, sales, bad = page("SKU", 10_000, seed=15)
    assert (len(levels) + len(sales), len(bad)) == (10_000, 50)

    statements = await deliver(c, ingest_message(c, levels, sales))

    async with c.pool.acquire() as conn:
        dead = await conn.fetch(
            "SELECT body, error FROM dead_letter WHERE queue = 'inventory.ingest' ORDER BY id"
        )
        ledger = await conn.fetchval("SELECT count(*) FROM inventory_ledger")
        sold = await conn.fetchval("SELECT count(*) FROM ingested_sale")
        kinds = await conn.fetch(
            "SELECT event_type, count(*) AS n FROM domain_event "
            "WHERE event_type LIKE 'inventory.level%' GROUP BY 1"
        )
    # Each bad record is its own dead letter, with its reason: an ingest message of that
    # record alone (D-386).
    payloads = [_json(d["body"])["payload"] for d in dead]
    assert _sorted_json([(*p["levels"], *p["sales"]) for p in payloads]) == _sorted_json(
        [(r,) for r in bad]
    )
    assert all(d["error"] for d in dead)
    good_levels = [r for r in levels if r["on_hand"] >= 0]
    good_sales = [r for r in sales if r["delta"] != 0]
    stock = {s.sku: s for s in await c.stock.get_many([r["sku"] for r in good_levels[:2000]])}
    for i, r in enumerate(good_levels[:2000]):
        sold_here = 1 if i < len(good_sales) else 0
        assert stock[r["sku"]].on_hand == max(0, r["on_hand"] - sold_here), r
    assert sold == len(good_sales)
    # One ledger entry per level that moved on_hand and per sale, nothing twice.
    moved = sum(1 for r in good_levels if r["on_hand"] > 0)
    assert ledger == moved + len(good_sales)
    # The page's new levels travel as bulk messages, not one per SKU.
    by_kind = {r["event_type"]: r["n"] for r in kinds}
    assert by_kind.get(LEVEL_CHANGED, 0) == 0
    assert by_kind[LEVELS_CHANGED] >= len(good_levels) // PER_MESSAGE
    await assert_clean(c)

    # The same page again (a redelivery under a new id): nothing moves, nothing doubles.
    await deliver(c, ingest_message(c, levels, sales))
    async with c.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM inventory_ledger") == ledger
        assert await conn.fetchval("SELECT count(*) FROM dead_letter") == 2 * len(bad)
    # A constant number of statements, whatever the page's size: a page of the same
    # shape a tenth the size costs what the page of 10,000 cost.
    small = await deliver(c, ingest_message(c, *page("NEW", 1_000, seed=16)[:2]))
    assert small == statements
    await assert_clean(c)


async def test_a_bulk_levels_message_applied_twice_changes_nothing_the_second_time(
    c: Container,
) -> None:
    skus = [f"SKU-{i}" for i in range(1200)]
    await deliver(c, ingest_message(c, [level(s, 5, T0) for s in skus]))
    bulk = [e for e in await level_messages(c) if e.type == LEVELS_CHANGED]
    assert len(bulk) == 3  # 1,200 SKUs, up to 500 per message
    worker = Propagator(c.propagation, {}, c.pool)
    for env in bulk:
        await handle(worker, env)
    first = await sync_rows(c)
    assert len(first) == len(skus) * len(CHANNELS)
    assert {row[:4] for row in first.values()} == {(1, 5, "PENDING", 1)}
    for env in bulk:
        await handle(worker, env)
    assert await sync_rows(c) == first
    # Every SKU of a repeated message is judged stale, for every channel.
    levels = [(p["sku"], p["version"], p["available"]) for p in bulk[0].payload["levels"]]
    async with c.pool.acquire() as conn, conn.transaction():
        verdicts = await c.propagation.record_many(conn, levels, c.clock(), "api")
    assert {v for per in verdicts.values() for v in per.values()} == {Verdict.STALE}


async def test_shuffled_bulk_and_single_messages_end_at_the_newest_version(
    c: Container,
) -> None:
    skus = [f"SKU-{i}" for i in range(40)]
    rng = random.Random(7)
    for n in range(4):
        # A bulk page for every SKU, then single-SKU changes of a few of them.
        at = T0 + timedelta(seconds=n)
        await deliver(c, ingest_message(c, [level(s, rng.randint(0, 9), at) for s in skus]))
        for sku in rng.sample(skus, 5):
            await c.stock.receive(Receipt(sku, rng.randint(1, 3), f"r-{n}-{sku}"))
    messages = await level_messages(c)
    assert {e.type for e in messages} == {LEVEL_CHANGED, LEVELS_CHANGED}
    rng.shuffle(messages)
    worker = Propagator(c.propagation, {}, c.pool)
    for env in messages:
        await handle(worker, env)
    newest = {s.sku: s for s in await c.stock.get_many(skus)}
    rows = await sync_rows(c)
    for ch in CHANNELS:
        for sku in skus:
            version, quantity = rows[(ch, sku)][:2]
            assert (version, quantity) == (newest[sku].version, newest[sku].available), (ch, sku)


async def test_the_expiry_worker_expires_a_batch_at_once(c: Container, clock: FakeClock) -> None:
    skus = [f"SKU-{i}" for i in range(30)]
    for sku in skus:
        await c.stock.receive(Receipt(sku, 20, f"r-{sku}"))
    for i in range(120):
        lines = (OrderLine(skus[i % 30], 1), OrderLine(skus[(i + 7) % 30], 2))
        await c.reservations.reserve(ReserveRequest(f"o-{i}", lines, ttl_seconds=60))
    clock.advance(61)
    assert await c.reservations.expire_due(100) == 100
    assert await c.reservations.expire_due(100) == 20
    for s in await c.stock.get_many(skus):
        assert (s.reserved, s.available) == (0, 20), s.sku
    async with c.pool.acquire() as conn:
        statuses = await conn.fetch("SELECT DISTINCT status FROM reservation")
        entries = await conn.fetchval(
            "SELECT count(*) FROM inventory_ledger WHERE entry_type = 'ORDER_EXPIRE'"
        )
    assert [r["status"] for r in statuses] == ["EXPIRED"]
    assert entries == 240  # one per allocation: two lines of one batch each
    await assert_clean(c)


async def test_a_page_of_new_plain_lotted_and_oversold_places_costs_the_same_at_10_and_5000(
    c: Container,
) -> None:
    """Every kind of place in one page, at two sizes: a new one (created holding its
    level), a lotless one, one with lots (computed by level_moves), one that had oversold
    (settled by the level), one left short by the level. Same statements either way."""
    oversell = 0.0
    statements = []
    for n in (10, 5_000):
        p = f"S{n}"
        await c.stock.receive(Receipt(f"{p}-PLAIN", 10, f"{p}-r1"))
        await c.stock.receive(Receipt(f"{p}-LOTS", 5, f"{p}-r2", None, "L1", T0 + timedelta(30)))
        await c.stock.receive(Receipt(f"{p}-SHORT", 5, f"{p}-r3"))
        await c.reservations.reserve(ReserveRequest(f"{p}-o", (OrderLine(f"{p}-SHORT", 4),)))
        await deliver(c, ingest_message(c, [], [sale(f"{p}-t", f"{p}-OVER", -4)]))
        later = T0 + timedelta(hours=1)
        special = [
            level(f"{p}-PLAIN", 3, later),
            level(f"{p}-LOTS", 8, later),
            level(f"{p}-OVER", 6, later),
            level(f"{p}-SHORT", 1, later),
        ]
        new = [level(f"{p}-N{i:05}", i % 7, later) for i in range(n)]
        statements.append(
            await deliver(c, ingest_message(c, [*new[: n // 2], *special, *new[n // 2 :]]))
        )

        got = {s.sku: s for s in await c.stock.get_many([r["sku"] for r in [*special, *new]])}
        assert got[f"{p}-PLAIN"].on_hand == 3
        lots = {b.lot_number: b.on_hand for b in got[f"{p}-LOTS"].batches}
        assert lots == {None: 3, "L1": 5}
        over = got[f"{p}-OVER"]
        assert (over.on_hand, over.oversold) == (6, 0)
        short = got[f"{p}-SHORT"]
        assert (short.on_hand, short.reserved, short.shortfall) == (1, 4, 3)
        assert all(got[r["sku"]].on_hand == r["on_hand"] for r in new)
        m = c.metrics.registry.get_sample_value
        now = m("stockkeeper_oversell_total", {"source": ERP}) or 0.0
        assert now - oversell == 3 + 4  # the level's shortfall, and the oversold sale's
        oversell = now
        async with c.pool.acquire() as conn:
            moved_skus = await conn.fetchval(
                "SELECT count(DISTINCT sku) FROM inventory_ledger "
                "WHERE entry_type = 'ADJUSTMENT' AND sku LIKE $1",
                f"{p}-%",
            )
            announced = await conn.fetchval(
                "SELECT sum(jsonb_array_length(payload->'levels')) FROM domain_event "
                "WHERE event_type = $1 AND payload->'levels'->0->>'sku' LIKE $2",
                LEVELS_CHANGED,
                f"{p}-%",
            )
        # One ledger entry per moved place; each moved SKU announced once.
        assert moved_skus == 4 + sum(1 for r in new if r["on_hand"])
        assert announced == moved_skus
    assert statements[0] == statements[1]
    await assert_clean(c)


async def test_a_first_sync_page_writes_each_new_batch_once(c: Container) -> None:
    """A page of 5,000 places we have never seen: each batch is inserted holding its
    level, not inserted empty and then updated (an update of a row inserted in the same
    transaction re-runs its foreign-key checks: twice the writes, per row, D-330)."""
    levels = [level(f"F-{i:05}", i % 9, T0) for i in range(5_000)]
    handle = ingest_handler(c.ingest)
    async with c.pool.acquire() as conn, conn.transaction():
        await handle(conn, ingest_message(c, levels))
        rows = await conn.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables "
            "WHERE relname = ANY($1)",
            ["sku_batch", "inventory_ledger"],
        )
    writes = {r["relname"]: (r["n_tup_ins"], r["n_tup_upd"]) for r in rows}
    moved = sum(1 for r in levels if r["on_hand"])
    assert writes["sku_batch"] == (5_000, 0)
    assert writes["inventory_ledger"] == (moved, 0)
    got = await c.stock.get_many([r["sku"] for r in levels[:50]])
    assert [s.on_hand for s in got] == [r["on_hand"] for r in levels[:50]]
    await assert_clean(c)
