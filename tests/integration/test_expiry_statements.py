"""The expiry worker expires a batch of reservations with a constant number of
statements (issue 15 point 5): 2 or 200 overdue reservations, the same statements."""

from __future__ import annotations

from stockkeeper.bootstrap import Container
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services.audit import audit
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.expiry import ExpiryWorker
from tests.conftest import FakeClock
from tests.integration.statements import statements

SKUS = [f"SKU-{i}" for i in range(20)]


async def overdue(c: Container, clock: FakeClock, prefix: str, n: int) -> None:
    """``n`` PENDING reservations of two lines each (on different SKUs), all past due."""
    for i in range(n):
        lines = (OrderLine(SKUS[i % 20], 1), OrderLine(SKUS[(i + 3) % 20], 2))
        await c.reservations.reserve(ReserveRequest(f"{prefix}-{i}", lines, ttl_seconds=60))
    clock.advance(61)


async def sweep(c: Container) -> tuple[int, int]:
    """One sweep of the expiry worker: how many it expired, in how many statements."""
    async with statements(c.pool) as seen:
        expired = await c.reservations.expire_due(500)
    return expired, len(seen)


async def test_expiring_2_or_200_reservations_runs_the_same_statements(
    container: Container, clock: FakeClock
) -> None:
    c = container
    for sku in SKUS:
        await c.stock.receive(Receipt(sku, 100, f"r-{sku}"))
    assert ExpiryWorker(c).batch >= 200  # the worker's batch holds all 200 at once
    await overdue(c, clock, "small", 2)
    small = await sweep(c)
    await overdue(c, clock, "large", 200)
    large = await sweep(c)
    assert (small[0], large[0]) == (2, 200)
    assert small[1] == large[1], (small, large)
    for s in await c.stock.get_many(SKUS):
        assert (s.reserved, s.available) == (0, 100), s.sku
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.summary()
