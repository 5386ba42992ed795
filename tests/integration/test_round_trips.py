"""Round trips per use case (issue 12, points 2 and 3; D-300..D-303, D-365..D-367).

Counted as ``bench/statements.py`` counts them (``store/roundtrips.py``): every
statement the use case sends on its connection, ``BEGIN`` and ``COMMIT`` included, and
apart from them what the pool sends when it takes the connection back. Each use case
runs once on the connection first, so its statements are prepared, as on a server that
has been up a while. The bounds are the counts after D-300; before they were 12 to 15.
With an Idempotency-Key a use case costs what it costs without one (D-365, D-366),
but for the paths of D-367.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services import idempotency
from stockkeeper.services.audit import audit
from stockkeeper.services.idempotency import Answer, IdempotencyKey
from stockkeeper.services.orders import PlaceOrder
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Adjustment, Receipt
from stockkeeper.store.pool import Conn
from stockkeeper.store.roundtrips import Statements, count
from tests.support import until_lock_waits

STRATEGIES = ["conditional", "row_lock", "optimistic"]

# Statements per use case, at most (before D-300: 12, 10, 15 (13 row_lock), 5, 10).
BOUNDS = {
    "receipt": 7,
    "adjustment": 8,
    "reserve": 7,
    "reserve repeat": 4,
    "confirm": 7,
    "fulfil": 7,
    "release": 7,
}


@pytest.fixture(params=STRATEGIES)
async def c(request: pytest.FixtureRequest, config: dict[str, Any], clock: Any) -> Any:
    cfg = {**config, "concurrency": {**config.get("concurrency", {}), "strategy": request.param}}
    container = await build(Settings.model_validate(cfg), clock=clock)
    await container.stock.receive(Receipt("RT-1", 1000, "seed-1"))
    await container.stock.receive(Receipt("RT-2", 1000, "seed-2"))
    yield container
    await container.close()


Use = Callable[[Conn, str], Awaitable[Any]]


async def assert_audit_clean(c: Container) -> None:
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.render()


def use_cases(c: Container) -> dict[str, Use]:
    r = c.reservations

    async def reserve(k: Conn, n: str) -> Any:
        return await r.reserve(ReserveRequest(f"o-{n}", (OrderLine("RT-1", 1),)), k)

    return {
        "receipt": lambda k, n: c.stock.receive(Receipt("RT-1", 5, f"r-{n}"), k),
        "adjustment": lambda k, n: c.stock.adjust(
            Adjustment("RT-1", "unavailable", "count", f"a-{n}", delta=1), k
        ),
        "reserve": reserve,
        "reserve repeat": reserve,
        "confirm": lambda k, n: r.confirm(f"o-{n}", k),
        "fulfil": lambda k, n: r.fulfil(f"o-{n}", k),
        "release": lambda k, n: r.release(f"p-{n}", None, k),
    }


async def counted_runs(c: Container, *, key: bool = False) -> dict[str, Statements]:
    """Every use case twice (``warm``, then ``n``), the second run counted; with ``key``
    through ``idempotency.once`` (an Idempotency-Key of its own per run)."""
    out: dict[str, Statements] = {}
    for n in ("kwarm", "kn") if key else ("warm", "n"):
        await c.reservations.reserve(ReserveRequest(f"p-{n}", (OrderLine("RT-2", 1),)))
        for name, use in use_cases(c).items():
            if key:
                seen = await keyed(c, f"{name}-{n}", use, n)
            else:
                seen = await count(c.pool, lambda conn, _lent, use=use, n=n: use(conn, n))
            out[name] = seen
    return out


async def test_every_write_path_stays_within_its_round_trips(c: Container) -> None:
    seen = await counted_runs(c)

    assert {name: s.total for name, s in seen.items()} == {
        name: min(s.total, BOUNDS[name]) for name, s in seen.items()
    }, {name: s.queries for name, s in seen.items()}
    # The pool takes a use case's connection back without a reset query (D-303).
    assert {name: s.on_release for name, s in seen.items()} == dict.fromkeys(seen, 0)
    # A reservation alone in its transaction takes no savepoint (D-301).
    assert seen["reserve"].by_word["SAVEPOINT"] == 0
    await assert_audit_clean(c)


async def keyed(c: Container, key: str, use: Use, n: str) -> Statements:
    async def run(conn: Conn, lent: Any) -> Answer:
        async def recorded(k: Conn) -> Answer:
            await use(k, n)
            return Answer(201, {"n": n})

        return await idempotency.once(
            lent, IdempotencyKey("tests", key, "POST", "/x", f"fp-{key}"), recorded
        )

    return await count(c.pool, run)


async def test_an_idempotency_key_costs_no_statement_more(c: Container) -> None:
    """The key goes in with the use case's events, in their statement (D-365): a use
    case that writes events costs with a key what it costs without. One without (a
    repeat of an order) writes the key in a statement of its own."""
    plain = await counted_runs(c)

    with_key = await counted_runs(c, key=True)

    extra = {name: with_key[name].total - plain[name].total for name in plain}
    assert extra == {**dict.fromkeys(plain, 0), "reserve repeat": 1}, {
        name: s.queries for name, s in with_key.items()
    }
    assert all(s.by_word["SAVEPOINT"] == 0 for s in with_key.values())
    # And the key replays: a repeat answers the first answer, its effects rolled back.
    again = await idempotency.once(
        c.pool,
        IdempotencyKey("tests", "reserve-kn", "POST", "/x", "fp-reserve-kn"),
        lambda k: _never(k),
    )
    assert (again.status, again.body, again.replayed) == (201, {"n": "kn"}, True)
    await assert_audit_clean(c)


async def test_an_order_placed_with_a_key_is_still_one_statement(c: Container) -> None:
    """Placing an order is one statement without a transaction; with a key too: the key
    goes in that statement, with the answer to the order (D-366)."""
    ship_to = {"name": "Ada", "line1": "Unter den Linden 1", "city": "Berlin", "country": "DE"}

    def place(k: Conn, order: str) -> Any:
        return c.orders.place(PlaceOrder(order, (OrderLine("RT-1", 1),), ship_to), k)

    async def keyed_place(lent: Any, order: str) -> Answer:
        async def recorded(k: Conn) -> Answer:
            await place(k, order)
            return Answer(202, {"order": order})

        return await idempotency.once(
            lent,
            IdempotencyKey("tests", order, "POST", "/orders", "fp"),
            recorded,
            render=lambda _view: Answer(202, {"order": order}),
        )

    seen = {}
    for n in ("warm", "n"):
        seen["plain"] = await count(c.pool, lambda conn, _lent, n=n: place(conn, f"po-{n}"))
        seen["keyed"] = await count(c.pool, lambda _conn, lent, n=n: keyed_place(lent, f"pk-{n}"))

    assert (seen["plain"].total, seen["keyed"].total) == (1, 1), seen
    again = await keyed_place(c.pool, "pk-n")
    assert (again.status, again.body, again.replayed) == (202, {"order": "pk-n"}, True)


async def _never(conn: Conn) -> Answer:
    return Answer(500, {"unexpected": True})


@pytest.mark.parametrize("keyed_path", [False, True])
async def test_a_lost_race_reruns_the_whole_transaction(
    config: dict[str, Any], clock: Any, keyed_path: bool
) -> None:
    """optimistic: a batch changed between the read and the compare-and-swap. The first
    try ran without a savepoint, so its transaction is rolled back and run again: the
    reservation is made once, the ledger and the audit agree."""
    cfg = {**config, "concurrency": {**config.get("concurrency", {}), "strategy": "optimistic"}}
    c = await build(Settings.model_validate(cfg), clock=clock)
    try:
        await c.stock.receive(Receipt("RACE-1", 10, "seed"))
        req = ReserveRequest("race-1", (OrderLine("RACE-1", 3),))
        retries = c.metrics.reservation_retries.labels(strategy="optimistic")
        before = retries._value.get()

        async def reserve(conn: Conn, lent: Any) -> Any:
            if not keyed_path:
                return await c.reservations.reserve(req, conn)

            async def recorded(k: Conn) -> Answer:
                view = await c.reservations.reserve(req, k)
                return Answer(201 if view.created else 200, {"created": view.created})

            key = IdempotencyKey("tests", "race", "POST", "/x", "fp")
            return await idempotency.once(lent, key, recorded)

        async with c.pool.acquire() as rival:
            tx = rival.transaction()
            await tx.start()
            # The rival changes the batch (its version) and holds the row until commit.
            await rival.execute("UPDATE sku_batch SET version = version + 1 WHERE sku = 'RACE-1'")
            counting = asyncio.create_task(count(c.pool, reserve))
            # The reservation read the batch (the rival's change is not committed), and
            # its compare-and-swap waits for the rival's row lock: a condition, polled.
            await until_lock_waits(c.pool, "the reservation")
            await tx.commit()
            seen = await counting

        assert retries._value.get() == before + 1
        # The transaction ran twice: rolled back whole after the lost race, then again.
        assert (seen.by_word["BEGIN"], seen.by_word["COMMIT"]) == (2, 1), seen.queries
        view = await c.reservations.get("race-1")
        assert [a.quantity for li in view.lines for a in li.allocations] == [3]
        async with c.pool.acquire() as k:
            reserved = await k.fetchval("SELECT reserved FROM sku_batch WHERE sku = 'RACE-1'")
        assert reserved == 3
        await assert_audit_clean(c)
    finally:
        await c.close()
