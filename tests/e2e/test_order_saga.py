"""The order saga end to end: real processes (inventory-api, dispatcher, expiry, saga) on
PostgreSQL and RabbitMQ, a client over HTTP.

One inventory-api, dispatcher and expiry worker serve the whole module; each test runs
its own saga worker(s), with the configuration and failpoints it needs.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from stockkeeper.messaging.rabbitmq import delete_topology
from stockkeeper.services.audit import audit
from tests.e2e.helpers import client, receive, stock_of
from tests.e2e.messaging_helpers import Child, Children, wait_until
from tests.support import WRITER_TOKEN, ServerProcess, auth, base_config

pytestmark = pytest.mark.slow

WAIT = 60.0
W = auth(WRITER_TOKEN)
SHIP_TO = {"name": "Ada", "line1": "Unter den Linden 1", "city": "Berlin", "country": "DE"}
CARRIERS = [
    {"id": "post", "cost": "4.00", "reliability": "0.90", "transit_days": 4},
    {"id": "express", "cost": "9.00", "reliability": "0.99", "transit_days": 1},
]
RETRY = {"retry_base_ms": 100, "retry_max_ms": 800}
RETRY_DELAYS = [100, 200, 400, 800]


@dataclass
class Stack:
    config: dict[str, Any]
    api: ServerProcess
    kids: Children
    db_url: str
    workdir: Path

    @contextmanager
    def saga(self, *, failpoints: str | None = None, **sections: Any) -> Iterator[Child]:
        """A ``stockkeeper run saga`` child with ``sections`` over the stack's config."""
        cfg = {**self.config, **{k: {**self.config.get(k, {}), **v} for k, v in sections.items()}}
        label = f"saga-{failpoints or 'ok'}"
        child = Child(["run", "saga"], cfg, self.workdir, label=label, failpoints=failpoints)
        self.kids.all.append(child.start())
        try:
            yield child
        finally:
            child.stop()
            self.kids.all.remove(child)


@pytest.fixture(scope="module")
async def stack(
    module_db_url: str, rabbit_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    workdir = tmp_path_factory.mktemp("order-saga")
    cfg = base_config(
        module_db_url,
        database={"pool_size": None},  # each service sizes its own pool (wiring.CONNECTIONS)
        broker={"url": rabbit_url, "prefix": prefix, **RETRY},
        dispatcher={"poll_interval_ms": 200},
        reservations={"expiry_interval_ms": 100},
        orders={"carriers": CARRIERS},
        logging={"level": "info"},
    )
    kids = Children(workdir)
    api = ServerProcess(cfg, workdir, "inventory-api")
    try:
        kids.dispatcher(cfg)
        kids._start(Child(["run", "expiry"], cfg, workdir, label="expiry"))
        api.start()
        yield Stack(cfg, api, kids, module_db_url, workdir)
    finally:
        api.stop()
        kids.stop_all()
        await delete_topology(rabbit_url, prefix, RETRY_DELAYS)


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client(stack.api, connections=200) as c:
        yield c


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.db_url)
    try:
        yield conn
    finally:
        await conn.close()


def an_order(order_id: str, sku: str, quantity: int = 1) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "lines": [{"sku": sku, "quantity": quantity}],
        "ship_to": SHIP_TO,
    }


async def statuses(db: asyncpg.Connection, prefix: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT order_id, status FROM orders WHERE order_id LIKE $1", prefix + "%"
    )
    return {r["order_id"]: r["status"] for r in rows}


async def until_status(
    db: asyncpg.Connection, stack: Stack, want: dict[str, str], what: str
) -> None:
    async def reached() -> bool:
        got = await statuses(db, "")
        return all(got.get(k) == v for k, v in want.items())

    await wait_until(reached, timeout=WAIT, what=what, children=stack.kids, interval=0.05)


async def assert_audit_clean(db: asyncpg.Connection) -> None:
    report = await audit(db)
    assert report.clean, report.render()


# -- 500 orders race for 100 units ----------------------------------------------------


async def test_500_concurrent_orders_for_100_units(
    stack: Stack, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Exactly 100 reach AWAITING_PAYMENT and 400 FAILED with their shortage, under the
    optimistic strategy with almost no retries of its own and four saga consumers
    racing for one batch: lost compare-and-swaps are retried (in the step, then by the
    consumer runner), never turned into failures."""
    await receive(http, "HOT-500", 100)
    n = 500
    with stack.saga(
        concurrency={"strategy": "optimistic", "max_retries": 1}, orders={"consumers": 4}
    ) as saga:
        responses = await asyncio.gather(
            *(
                http.post("/orders", json=an_order(f"race-{i:03d}", "HOT-500"), headers=W)
                for i in range(n)
            )
        )
        assert Counter(r.status_code for r in responses) == {202: n}
        assert all(r.json()["status"] == "PENDING" for r in responses)

        async def all_decided() -> bool:
            got = await statuses(db, "race-")
            return len(got) == n and "PENDING" not in got.values()

        await wait_until(all_decided, timeout=WAIT, what=f"{n} decisions", children=stack.kids)
        retries: Counter[str] = Counter()
        for (name, _), value in saga.metrics().items():
            if name.endswith("_retries_total"):
                retries[name] += int(value)

    docs = await asyncio.gather(*(http.get(f"/orders/race-{i:03d}", headers=W) for i in range(n)))
    by_status = Counter(d.json()["status"] for d in docs)
    assert by_status == {"AWAITING_PAYMENT": 100, "FAILED": 400}, (by_status, retries)
    for d in docs:
        doc = d.json()
        if doc["status"] == "FAILED":
            assert doc["reason"] == "insufficient stock", doc
            assert doc["shortages"] == [{"sku": "HOT-500", "requested": 1, "available": 0}], doc
        else:
            assert "payment_due_at" in doc
    level = await stock_of(http, "HOT-500")
    assert (level["reserved"], level["available"]) == (100, 0)
    assert await db.fetchval("SELECT count(*) FROM reservation WHERE order_id LIKE 'race-%'") == 100
    await assert_audit_clean(db)


# -- kill -9 at each step --------------------------------------------------------------


async def test_the_saga_killed_at_each_step_in_turn(
    stack: Stack, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A saga worker is SIGKILLed inside each step in turn (its transaction not yet
    committed), then once after a commit and before the ack; the next worker picks the
    message up again. Every order ends where it should, held stock matches, and no order
    was ever reserved twice."""
    sku = "CRASH-1"
    await receive(http, sku, 20)
    ids = {k: f"crash-{k}" for k in "ABCDE"}
    one = {"consumers": 1}  # one message at a time: the kill lands where we want it

    async def post(path: str, body: dict[str, Any] | None = None) -> None:
        r = await http.post(path, json=body, headers=W)
        assert r.status_code in (200, 202), r.text

    async def killed(saga: Child) -> None:
        assert await saga.wait_exit(WAIT) == -signal.SIGKILL, saga.log_tail()

    for k in "ABCD":
        await post("/orders", an_order(ids[k], sku, 2))

    # 1. Inside the reserve step: nothing of it is left.
    with stack.saga(failpoints="saga.reserve=kill", orders=one) as saga:
        await killed(saga)
    assert set((await statuses(db, "crash-")).values()) == {"PENDING"}
    assert await db.fetchval("SELECT count(*) FROM reservation WHERE order_id LIKE 'crash-%'") == 0

    # 2. Inside the carrier step (after the next worker reserved all four).
    with stack.saga(failpoints="saga.route=kill", orders=one) as saga:
        await until_status(db, stack, {ids[k]: "AWAITING_PAYMENT" for k in "ABCD"}, "reserved")
        for k in "AB":
            await post(f"/orders/{ids[k]}/payment", {"status": "succeeded", "reference": k})
        await killed(saga)
    assert (await statuses(db, "crash-"))[ids["A"]] == "PAID"

    # 3. Inside the step that hears of a release made elsewhere.
    with stack.saga(failpoints="saga.reservation_released=kill", orders=one) as saga:
        await until_status(
            db, stack, {ids["A"]: "READY_TO_SHIP", ids["B"]: "READY_TO_SHIP"}, "routed"
        )
        await post("/inventory/release", {"order_id": ids["C"], "reason": "fraud check"})
        await killed(saga)
    assert (await statuses(db, "crash-"))[ids["C"]] == "AWAITING_PAYMENT"

    # 4. Inside the step that hears of an expiry. The payment window of D is moved into
    # the past (as if it had passed); the expiry worker does the rest as it always does.
    with stack.saga(failpoints="saga.reservation_expired=kill", orders=one) as saga:
        await until_status(db, stack, {ids["C"]: "CANCELLED"}, "C cancelled")
        await db.execute(
            "UPDATE reservation SET expires_at = now() - interval '1 second' WHERE order_id = $1",
            ids["D"],
        )
        await killed(saga)
    assert (await statuses(db, "crash-"))[ids["D"]] == "AWAITING_PAYMENT"

    # 5. Inside the step that hears of a shipment.
    with stack.saga(failpoints="saga.reservation_fulfilled=kill", orders=one) as saga:
        await until_status(db, stack, {ids["D"]: "EXPIRED"}, "D expired")
        await post("/inventory/fulfil", {"order_id": ids["A"]})
        await killed(saga)
    assert (await statuses(db, "crash-"))[ids["A"]] == "READY_TO_SHIP"

    # 6. After a step committed, before its ack: the message comes back, as a duplicate.
    with stack.saga(failpoints="consumer.before_ack=kill", orders=one) as saga:
        await killed(saga)
    assert (await statuses(db, "crash-"))[ids["A"]] == "SHIPPED"

    # 7. A worker that lives: the duplicate changes nothing, and a new order goes through.
    with stack.saga(orders=one) as saga:
        await post("/orders", an_order(ids["E"], sku, 2))
        await until_status(db, stack, {ids["E"]: "AWAITING_PAYMENT"}, "E reserved")
        assert saga.consumer_outcomes().get("duplicate", 0) >= 1, saga.consumer_outcomes()

    assert await statuses(db, "crash-") == {
        ids["A"]: "SHIPPED",
        ids["B"]: "READY_TO_SHIP",
        ids["C"]: "CANCELLED",
        ids["D"]: "EXPIRED",
        ids["E"]: "AWAITING_PAYMENT",
    }
    # One reservation and one allocation per order, whatever was redone.
    rows = await db.fetch(
        "SELECT reference_id, count(*) AS n FROM inventory_ledger "
        "WHERE entry_type = 'ORDER_ALLOCATE' AND reference_id LIKE 'crash-%' GROUP BY 1"
    )
    assert {r["reference_id"]: r["n"] for r in rows} == dict.fromkeys(ids.values(), 1)
    assert await db.fetchval("SELECT count(*) FROM reservation WHERE order_id LIKE 'crash-%'") == 5
    level = await stock_of(http, sku)
    # A shipped 2; B holds 2 committed; E holds 2 reserved; C and D gave theirs back.
    assert (level["on_hand"], level["committed"], level["reserved"]) == (18, 2, 2)
    carrier = (await http.get(f"/orders/{ids['B']}", headers=W)).json()["carrier"]
    assert carrier["id"] == "post"
    assert await db.fetchval("SELECT count(*) FROM dead_letter") == 0
    await assert_audit_clean(db)


# -- payment timeout -------------------------------------------------------------------


async def test_no_payment_in_time_expires_the_order_and_frees_the_stock(
    stack: Stack, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await receive(http, "SLOW-PAY", 3)
    with stack.saga(orders={"payment_timeout_seconds": 2}):
        await http.post("/orders", json=an_order("late-1", "SLOW-PAY", 3), headers=W)
        await until_status(db, stack, {"late-1": "AWAITING_PAYMENT"}, "the reservation")
        assert (await stock_of(http, "SLOW-PAY"))["available"] == 0
        await until_status(db, stack, {"late-1": "EXPIRED"}, "the payment timeout")
    doc = (await http.get("/orders/late-1", headers=W)).json()
    assert doc["reason"] == "payment not received before the reservation expired"
    assert (await stock_of(http, "SLOW-PAY"))["available"] == 3
    r = await http.post(
        "/orders/late-1/payment", json={"status": "succeeded", "reference": "late"}, headers=W
    )
    assert (r.status_code, r.json()["type"]) == (409, "reservation-expired")
    await assert_audit_clean(db)
