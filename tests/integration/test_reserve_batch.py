"""The set-based coalesced batch (D-290): a constant number of statements whatever its
size, and each request's own answer in the corner cases of a batch (an order id sent
twice in one batch, a repeat of a stored order at another location).

The coalescer runs over a pool of one connection whose statements are counted, so the
count is that of the path the HTTP route takes.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings, Strategy
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import Conflict, DomainError, InsufficientStock
from stockkeeper.services.audit import audit
from stockkeeper.services.coalescer import ReserveCoalescer
from stockkeeper.services.reservations import Reservations, ReservationView, ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.store.pool import Pool

STRATEGIES = ["conditional", "row_lock", "optimistic"]
NEVER_MS = 60_000  # batches close when full, never on the window


def order(order_id: str, *lines: tuple[str, int], location: str | None = None) -> ReserveRequest:
    return ReserveRequest(order_id, tuple(OrderLine(s, q) for s, q in lines), None, location)


async def outcome(co: ReserveCoalescer, req: ReserveRequest) -> ReservationView | DomainError:
    try:
        return await co.reserve(req)
    except DomainError as exc:
        return exc


class Counted:
    """A pool of one connection that counts every statement sent on it."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.pool: Pool | None = None

    def log(self, record: Any) -> None:
        self.seen[record.query.strip().split(None, 1)[0].upper()] += 1

    async def open(self, url: str) -> Pool:
        async def init(conn: asyncpg.Connection[asyncpg.Record]) -> None:
            await conn.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
            conn.add_query_logger(self.log)

        self.pool = await asyncpg.create_pool(url, min_size=1, max_size=1, init=init)
        return self.pool


MakeContainer = Callable[[str], Awaitable[Container]]


@pytest.fixture
async def make_container(config: dict[str, Any], clock: Any) -> AsyncIterator[MakeContainer]:
    built: list[Container] = []

    async def make(strategy: str) -> Container:
        cfg = {**config, "concurrency": {"strategy": strategy}}
        c = await build(Settings.model_validate(cfg), clock=clock, run_migrations=False)
        built.append(c)
        return c

    yield make
    for c in built:
        await c.close()


async def statements_of_batch(
    counted: Counted, svc: Reservations, reqs: list[ReserveRequest]
) -> tuple[int, list[ReservationView | DomainError]]:
    co = ReserveCoalescer(svc, window_ms=NEVER_MS, max_batch=len(reqs))
    counted.seen.clear()
    results = await asyncio.gather(*(outcome(co, r) for r in reqs))
    assert co.batches == 1
    return sum(counted.seen.values()), results


def served(tag: str, n: int) -> list[ReserveRequest]:
    """Every request served, over two SKUs."""
    return [order(f"ok-{tag}-{i}", ("SA" if i % 2 else "SB", 1)) for i in range(n)]


def mixed(tag: str, n: int) -> list[ReserveRequest]:
    """One request served, the others short."""
    return [
        order(f"one-{tag}", ("ONE", 1)),
        *(order(f"short-{tag}-{i}", ("ONE", 100)) for i in range(n - 1)),
    ]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_batch_costs_the_same_statements_for_2_and_50_requests(
    strategy: str, make_container: MakeContainer, db_url: str
) -> None:
    c = await make_container(strategy)
    for sku in ("SA", "SB"):
        await c.stock.receive(Receipt(sku, 1000, f"r-{sku}"))
    await c.stock.receive(Receipt("ONE", 10, "r-one"))
    counted = Counted()
    pool = await counted.open(db_url)
    try:
        svc = Reservations(pool, c.metrics, strategy=Strategy(strategy), clock=c.reservations.clock)
        # asyncpg looks up the types of each statement once per connection: warm it up.
        for kind in (served, mixed):
            await statements_of_batch(counted, svc, kind("warm", 3))
        counts: dict[str, dict[int, int]] = {"served": {}, "mixed": {}}
        for n in (2, 50):
            counts["served"][n], results = await statements_of_batch(
                counted, svc, served(str(n), n)
            )
            assert all(isinstance(r, ReservationView) and r.created for r in results)
            counts["mixed"][n], results = await statements_of_batch(counted, svc, mixed(str(n), n))
            assert isinstance(results[0], ReservationView)
            assert results[0].created
            assert all(isinstance(r, InsufficientStock) for r in results[1:])
    finally:
        await pool.close()
    assert counts["served"][2] == counts["served"][50], counts
    assert counts["mixed"][2] == counts["mixed"][50], counts
    # BEGIN, reservations, batch rows, the writes (lines, figures, ledger, SKU
    # versions: D-362), levels, events, COMMIT (no reset on release: D-303), as counted
    # here; refused requests add one (their rows go). Before D-362: 10 and 11.
    assert counts["served"][50] == 8, counts
    assert counts["mixed"][50] == 9, counts
    async with c.pool.acquire() as conn:
        assert (await audit(conn)).clean


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_an_order_id_sent_twice_in_one_batch(
    strategy: str, make_container: MakeContainer
) -> None:
    c = await make_container(strategy)
    await c.stock.receive(Receipt("A", 10, "r-a"))
    await c.stock.receive(Receipt("B", 2, "r-b"))
    await c.reservations.reserve(order("stored", ("A", 1)))
    co = ReserveCoalescer(c.reservations, window_ms=NEVER_MS, max_batch=9)

    batch = [
        order("same", ("A", 1)),
        order("same", ("A", 1)),  # the same again: the reservation its first copy made
        order("other", ("A", 1)),
        order("other", ("A", 2)),  # other lines than its first copy: conflict
        order("retry", ("B", 5)),  # short
        order("retry", ("B", 1)),  # its first copy was refused: a new attempt, served
        order("stored", ("A", 1), location="elsewhere"),  # another location: conflict
        order("stored", ("A", 1)),  # the stored reservation (200)
        order("gone", ("B", 5)),  # short, and never stored
    ]
    results = await asyncio.gather(*(outcome(co, r) for r in batch))

    assert co.batches == 1
    same_1, same_2, other_1, other_2, retry_1, retry_2, stored_1, stored_2, gone = results
    assert isinstance(same_1, ReservationView)
    assert same_1.created
    assert isinstance(same_2, ReservationView)
    assert not same_2.created
    assert same_2.lines == same_1.lines
    assert isinstance(other_1, ReservationView)
    assert other_1.created
    assert isinstance(other_2, Conflict)
    assert isinstance(retry_1, InsufficientStock)
    assert isinstance(retry_2, ReservationView)
    assert retry_2.created
    assert isinstance(stored_1, Conflict)
    assert isinstance(stored_2, ReservationView)
    assert not stored_2.created
    assert isinstance(gone, InsufficientStock)

    async with c.pool.acquire() as conn:
        rows = {
            r["order_id"]: r["lines"]
            for r in await conn.fetch("SELECT order_id, lines FROM reservation")
        }
        assert (await audit(conn)).clean
    assert set(rows) == {"stored", "same", "other", "retry"}
    # The served copy's lines are stored, not those of the refused first copy.
    assert rows["retry"] == [{"sku": "B", "quantity": 1}]
    a, b = await c.stock.get("A"), await c.stock.get("B")
    assert a.reserved == 3
    assert b.reserved == 1
    # A repeat answered from the store reads back the same reservation.
    again = await c.reservations.get("retry")
    assert [(li.sku, li.quantity) for li in again.lines] == [("B", 1)]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_batch_waiting_on_an_order_id_holds_no_stock_lock(
    strategy: str, make_container: MakeContainer, db_url: str
) -> None:
    """The batch takes its order ids before any batch row, as a single reserve does: a
    rival still inserting one of them makes it wait holding nothing another writer
    needs, so a reserve of the same SKUs goes through meanwhile (D-290)."""
    c = await make_container(strategy)
    await c.stock.receive(Receipt("B", 10, "r-b"))
    await c.stock.receive(Receipt("A", 10, "r-a"))
    blocker = await asyncpg.connect(db_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "INSERT INTO reservation (order_id, status, lines, expires_at) "
            "VALUES ('o-2', 'PENDING', '[]', now())"
        )
        co = ReserveCoalescer(c.reservations, window_ms=NEVER_MS, max_batch=2)
        many = asyncio.gather(
            outcome(co, order("o-1", ("A", 1))), outcome(co, order("o-2", ("B", 1)))
        )
        async with c.pool.acquire() as conn:
            for _ in range(1500):  # until the batch waits on the blocker's row
                n = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if n:
                    break
                await asyncio.sleep(0.01)
            assert n == 1
        single = await asyncio.wait_for(
            c.reservations.reserve(order("o-3", ("A", 1), ("B", 1))), timeout=10
        )
        assert single.created
        await tx.rollback()  # the batch goes on and serves both
        results = await many
    finally:
        await blocker.close()
    assert all(isinstance(r, ReservationView) and r.created for r in results), results
    a, b = await c.stock.get("A"), await c.stock.get("B")
    assert (a.reserved, b.reserved) == (2, 2)
    async with c.pool.acquire() as conn:
        assert (await audit(conn)).clean
