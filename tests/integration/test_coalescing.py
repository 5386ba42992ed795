"""Request coalescing: many reservations in one transaction, each with its own answer.

The coalescer is driven directly (the HTTP route only hands it requests without an
Idempotency-Key). Batches are closed by size with a window far longer than the test, so
which requests share a batch does not depend on timing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import Conflict, DomainError, InsufficientStock, InvalidRequest
from stockkeeper.failpoints import FailpointError, Failpoints
from stockkeeper.services.audit import audit
from stockkeeper.services.coalescer import ReserveCoalescer
from stockkeeper.services.reservations import ReservationView, ReserveRequest
from stockkeeper.services.stock import Receipt

STRATEGIES = ["conditional", "row_lock", "optimistic"]
NEVER_MS = 60_000  # a window no batch waits out here: batches close when full

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


def order(order_id: str, *lines: tuple[str, int]) -> ReserveRequest:
    return ReserveRequest(order_id, tuple(OrderLine(s, q) for s, q in lines))


async def outcome(co: ReserveCoalescer, req: ReserveRequest) -> ReservationView | DomainError:
    try:
        return await co.reserve(req)
    except DomainError as exc:
        return exc


async def assert_audit_clean(c: Container) -> None:
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.render()


async def reservation_ids(c: Container) -> set[str]:
    async with c.pool.acquire() as conn:
        return {r["order_id"] for r in await conn.fetch("SELECT order_id FROM reservation")}


@pytest.mark.parametrize("in_flight", [1, 4])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_300_coalesced_requests_for_100_units(
    strategy: str, in_flight: int, make_container: MakeContainer
) -> None:
    c = await make_container(strategy)
    await c.stock.receive(Receipt("HOT", 100, "r-hot"))
    co = ReserveCoalescer(c.reservations, window_ms=NEVER_MS, max_batch=60, max_in_flight=in_flight)

    results = await asyncio.gather(
        *(outcome(co, order(f"o-{i:03d}", ("HOT", 1))) for i in range(300))
    )

    kinds = Counter(type(r).__name__ for r in results)
    assert kinds == {"ReservationView": 100, "InsufficientStock": 200}, kinds
    assert co.batches == 5
    # First come, first served: the first 100 to arrive are the ones holding stock.
    won = {r.order_id for r in results if isinstance(r, ReservationView)}
    assert won == {f"o-{i:03d}" for i in range(100)}
    assert await reservation_ids(c) == won
    for r in results:
        if isinstance(r, InsufficientStock):
            assert [(s.sku, s.requested, s.available) for s in r.shortages] == [("HOT", 1, 0)]
    assert (await c.stock.get("HOT")).available == 0
    await assert_audit_clean(c)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_two_processes_coalescing_share_100_units_without_oversell(
    strategy: str, make_container: MakeContainer
) -> None:
    """Two server processes (``--server-procs 2``, two replicas) each coalesce their own
    requests on their own pool; only PostgreSQL's row locks stand between them (D-401).
    300 requests for 100 units, dealt to them in turn: exactly 100 hold stock, the rest
    are refused, and within each process the first to arrive are the ones served."""
    a, b = await make_container(strategy), await make_container(strategy)
    await a.stock.receive(Receipt("HOT", 100, "r-hot"))
    coalescers = [
        ReserveCoalescer(c.reservations, window_ms=NEVER_MS, max_batch=30, max_in_flight=4)
        for c in (a, b)
    ]

    results = await asyncio.gather(
        *(outcome(coalescers[i % 2], order(f"o-{i:03d}", ("HOT", 1))) for i in range(300))
    )

    kinds = Counter(type(r).__name__ for r in results)
    assert kinds == {"ReservationView": 100, "InsufficientStock": 200}, kinds
    won = {r.order_id for r in results if isinstance(r, ReservationView)}
    assert await reservation_ids(a) == won
    for side in (0, 1):
        mine = list(range(side, 300, 2))
        served = [i for i in mine if isinstance(results[i], ReservationView)]
        # First come, first served within the process: its winners are its earliest.
        assert served == mine[: len(served)], (side, served)
    assert (await a.stock.get("HOT")).available == 0
    await assert_audit_clean(a)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_each_request_of_a_batch_gets_its_own_answer(
    strategy: str, make_container: MakeContainer
) -> None:
    c = await make_container(strategy)
    await c.stock.receive(Receipt("A", 10, "r-a"))
    await c.stock.receive(Receipt("B", 3, "r-b"))
    await c.reservations.reserve(order("taken", ("A", 1)))
    co = ReserveCoalescer(c.reservations, window_ms=NEVER_MS, max_batch=7)

    batch = [
        order("good-1", ("A", 2), ("B", 1)),
        order("unknown", ("A", 1), ("NO-SUCH-SKU", 1)),
        order("taken", ("A", 5)),  # the same order id with other lines
        order("short", ("A", 1), ("B", 5)),
        order("dup-lines", ("A", 1), ("A", 1)),
        order("taken", ("A", 1)),  # the same order again: the same reservation
        order("good-2", ("B", 2)),
    ]
    results = await asyncio.gather(*(outcome(co, r) for r in batch))

    assert co.batches == 1
    good_1, unknown, other_lines, short, dup, repeat, good_2 = results
    assert isinstance(good_1, ReservationView)
    assert good_1.created
    assert isinstance(good_2, ReservationView)
    assert good_2.created
    assert isinstance(unknown, InvalidRequest)
    assert "NO-SUCH-SKU" in str(unknown)
    assert isinstance(other_lines, Conflict)
    assert isinstance(short, InsufficientStock)
    # good-1 took one B before it: the shortage is counted against what was left then.
    assert [(s.sku, s.requested, s.available) for s in short.shortages] == [("B", 5, 2)]
    assert isinstance(dup, InvalidRequest)
    assert isinstance(repeat, ReservationView)
    assert not repeat.created
    assert await reservation_ids(c) == {"taken", "good-1", "good-2"}
    a, b = await c.stock.get("A"), await c.stock.get("B")
    assert (a.reserved, a.available) == (3, 7)
    assert (b.reserved, b.available) == (3, 0)
    await assert_audit_clean(c)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_the_earliest_request_of_a_batch_gets_the_last_unit(
    strategy: str, make_container: MakeContainer
) -> None:
    c = await make_container(strategy)
    await c.stock.receive(Receipt("LAST", 1, "r-last"))
    co = ReserveCoalescer(c.reservations, window_ms=NEVER_MS, max_batch=8)

    results = await asyncio.gather(*(outcome(co, order(f"f-{i}", ("LAST", 1))) for i in range(8)))

    assert co.batches == 1
    assert isinstance(results[0], ReservationView)
    assert all(isinstance(r, InsufficientStock) for r in results[1:])
    await assert_audit_clean(c)


async def test_batches_in_flight_take_the_stock_in_the_order_they_were_cut(
    container: Container,
) -> None:
    """Two batches in flight, one unit left: the first batch cut gets it even when the
    second could lock first. Here the first waits on its order id, which a rival
    transaction holds; the second, cut after it, waits for it instead of taking the
    unit meanwhile (D-360)."""
    await container.stock.receive(Receipt("LAST", 1, "r-last"))
    co = ReserveCoalescer(container.reservations, window_ms=NEVER_MS, max_batch=2, max_in_flight=2)
    async with container.pool.acquire() as rival:
        held = rival.transaction()
        await held.start()
        await rival.execute(
            "INSERT INTO reservation (order_id, status, lines, expires_at)"
            " VALUES ('first', 'PENDING', '[]', now())"
        )
        ids = ["first", "second", "third", "fourth"]
        answers = [asyncio.ensure_future(outcome(co, order(o, ("LAST", 1)))) for o in ids]
        # Batches [first, second] and [third, fourth]: wait until the second batch
        # has either answered (it did not wait) or waits for the first.
        while not (all(a.done() for a in answers[2:]) or co.waiting_for_turn()):
            await asyncio.sleep(0.01)
        assert co.batches == 2
        await held.rollback()
        results = await asyncio.gather(*answers)

    assert isinstance(results[0], ReservationView), results
    assert all(isinstance(r, InsufficientStock) for r in results[1:]), results
    assert await reservation_ids(container) == {"first"}
    await assert_audit_clean(container)


async def test_a_short_window_still_serves_a_lone_request(container: Container) -> None:
    await container.stock.receive(Receipt("ONE", 2, "r-one"))
    co = ReserveCoalescer(container.reservations, window_ms=2, max_batch=64)
    view = await co.reserve(order("lone", ("ONE", 1)))
    assert view.created
    assert co.batches == 1
    # The next request after an idle moment starts a batch of its own.
    view = await co.reserve(order("lone-2", ("ONE", 1)))
    assert view.created
    assert co.batches == 2


async def test_a_batch_that_fails_as_a_whole_commits_nothing(container: Container) -> None:
    await container.stock.receive(Receipt("WHOLE", 10, "r-whole"))
    co = ReserveCoalescer(
        container.reservations,
        window_ms=NEVER_MS,
        max_batch=5,
        failpoints=Failpoints({"reserve.coalesced_request": "raise@3"}),
    )
    results = await asyncio.gather(
        *(co.reserve(order(f"w-{i}", ("WHOLE", 1))) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, FailpointError) for r in results)
    assert await reservation_ids(container) == set()
    assert (await container.stock.get("WHOLE")).available == 10
    await assert_audit_clean(container)
