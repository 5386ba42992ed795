"""An Idempotency-Key's transaction holds the use case's events back and writes them
with the key, in one statement (D-365): the same events, in the same order, as without
a key, none of a savepoint rolled back, and a key someone else holds writes none."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.events import Event
from stockkeeper.services import idempotency
from stockkeeper.services.idempotency import Answer, IdempotencyKey
from stockkeeper.services.orders import PlaceOrder
from stockkeeper.services.stock import Receipt
from stockkeeper.services.unit import add_events, savepoint, transaction
from stockkeeper.store.pool import Conn
from stockkeeper.store.roundtrips import count
from stockkeeper.store.sql import q
from tests.integration.orders_helpers import SHIP_TO
from tests.support import until_lock_waits


def key(name: str, fingerprint: str = "fp") -> IdempotencyKey:
    return IdempotencyKey("tests", name, "POST", "/x", fingerprint)


async def events_by_key(c: Container, ordering_key: str) -> list[tuple[str, Any]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT event_type, payload FROM domain_event WHERE ordering_key = $1 ORDER BY id",
            ordering_key,
        )
    return [(r["event_type"], r["payload"]) for r in rows]


async def awaiting_payment(c: Container, order_id: str) -> None:
    await c.orders.place(PlaceOrder(order_id, (OrderLine("EV-1", 1),), SHIP_TO))
    async with c.pool.acquire() as conn, conn.transaction():
        await c.orders.reserve(conn, order_id)


async def test_a_savepoint_rolled_back_drops_the_events_it_held(container: Container) -> None:
    c = container

    async def run(k: Conn) -> Answer:
        async with transaction(c.pool, k):
            await add_events(k, [Event("test.kept", {"n": 1}, key="sp")])
            try:
                async with savepoint(k):
                    await add_events(k, [Event("test.dropped", {"n": 2}, key="sp")])
                    raise LookupError("rolled back")
            except LookupError:
                pass
            await add_events(k, [Event("test.kept", {"n": 3}, key="sp")])
        return Answer(201, {"ok": True})

    seen = await count(c.pool, lambda _conn, lent: idempotency.once(lent, key("sp"), run))

    assert await events_by_key(c, "sp") == [("test.kept", {"n": 1}), ("test.kept", {"n": 3})]
    # Both held events and the key in one statement, the last before COMMIT; the key
    # in no statement of its own.
    assert seen.queries[-2:] == [q("insert_events"), "COMMIT;"], seen.queries
    assert (seen.by_word["SAVEPOINT"], seen.by_word["INSERT"]) == (1, 0), seen.queries
    again = await idempotency.once(c.pool, key("sp"), run)
    assert (again.status, again.body, again.replayed) == (201, {"ok": True}, True)
    assert len(await events_by_key(c, "sp")) == 2


@pytest.mark.parametrize("rival_commits", [True, False])
@pytest.mark.parametrize("use", ["events", "place"])
async def test_a_key_held_by_another_request_writes_none_of_our_events(
    container: Container, rival_commits: bool, use: str
) -> None:
    """Another request holds the key, uncommitted: our events' statement (or the order's
    one statement, D-366) waits for it at the key. It commits: nothing of ours is
    written and its answer is replayed. It rolls back: our key and events go in."""
    c = container
    name = f"race-{rival_commits}-{use}"
    await c.stock.receive(Receipt("EV-1", 10, f"seed-{name}"))

    async def with_events(k: Conn) -> Answer:
        async with transaction(c.pool, k):
            await add_events(k, [Event("test.race", {"ours": True}, key=f"order:{name}")])
        return Answer(201, {"ours": True})

    async def place(k: Conn) -> Answer:
        await c.orders.place(PlaceOrder(name, (OrderLine("EV-1", 1),), SHIP_TO), k)
        return Answer(201, {"ours": True})

    def run() -> Awaitable[Answer]:
        if use == "events":
            return idempotency.once(c.pool, key(name), with_events)
        return idempotency.once(
            c.pool, key(name), place, render=lambda _view: Answer(201, {"ours": True})
        )

    async with c.pool.acquire() as rival:
        tx = rival.transaction()
        await tx.start()
        await rival.execute(
            "INSERT INTO idempotency_key (principal, key, method, path, request_hash,"
            " status_code, response) VALUES ('tests', $1, 'POST', '/x', 'fp', 200,"
            " '{\"ours\": false}')",
            name,
        )
        ours = asyncio.create_task(run())
        await until_lock_waits(c.pool, "our request")
        if rival_commits:
            await tx.commit()
        else:
            await tx.rollback()
        answer = await ours

    ours_written = [t for t, _ in await events_by_key(c, f"order:{name}")]
    if rival_commits:
        assert (answer.status, answer.body, answer.replayed) == (200, {"ours": False}, True)
        assert ours_written == []
    else:
        assert (answer.status, answer.body, answer.replayed) == (201, {"ours": True}, False)
        assert ours_written == ["test.race" if use == "events" else "order.placed"]
    async with c.pool.acquire() as conn:
        orders = await conn.fetchval("SELECT count(*) FROM orders WHERE order_id = $1", name)
    assert orders == (1 if use == "place" and not rival_commits else 0)


async def test_pay_and_cancel_with_a_key_write_the_events_they_write_without_one(
    container: Container,
) -> None:
    """The events of a use case nested in a savepoint (the reservation's, under the
    order's) are held too, and all go in the order they were written, in one statement
    with the key: a key costs no statement more, and one less where the order writes
    events of its own after the reservation's (pay: confirmed, then paid)."""
    c = container
    await c.stock.receive(Receipt("EV-1", 100, "seed"))

    def keyed(order: str, use: Any) -> Any:
        async def recorded(k: Conn) -> Answer:
            await use(order, k)
            return Answer(200, {"order": order})

        return lambda _conn, lent: idempotency.once(lent, key(order), recorded)

    async def pay(order: str, k: Conn) -> Any:
        return await c.orders.pay(order, succeeded=True, reference=f"ref-{order}", conn=k)

    async def cancel(order: str, k: Conn) -> Any:
        return await c.orders.cancel(order, "changed mind", k)

    runs = {}
    # Each run once first, so its statements are prepared when counted.
    for n in ("warm", "n"):
        for name, use in (("pay", pay), ("cancel", cancel)):
            plain, with_key = f"{name}-plain-{n}", f"{name}-keyed-{n}"
            await awaiting_payment(c, plain)
            await awaiting_payment(c, with_key)
            runs[name] = await count(
                c.pool, lambda conn, _lent, use=use, order=plain: use(order, conn)
            )
            runs[f"{name}, keyed"] = await count(c.pool, keyed(with_key, use))

    for name in ("pay", "cancel"):
        plain_events = await events_by_key(c, f"order:{name}-plain-n")
        keyed_events = await events_by_key(c, f"order:{name}-keyed-n")
        assert [t for t, _ in keyed_events] == [t for t, _ in plain_events]
        assert len(plain_events) >= 3  # placed, allocated, and what this use case wrote
    extra = {name: runs[f"{name}, keyed"].total - runs[name].total for name in ("pay", "cancel")}
    assert extra == {"pay": -1, "cancel": 0}, {n: s.queries for n, s in runs.items()}
