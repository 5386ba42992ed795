"""admin-api in process: dead letters (list, replay, discard) and status, on the embedded
queue (no ``broker.url``), with the admin scope required everywhere."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stockkeeper.api.admin import create_admin_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.messaging.broker import OutgoingMessage
from stockkeeper.messaging.envelope import ATTEMPT_HEADER, Envelope
from stockkeeper.messaging.topology import INVENTORY_EVENTS, QUEUES
from stockkeeper.services.stock import Receipt
from stockkeeper.services.wms import Rejected
from stockkeeper.store import dead_letters
from stockkeeper.workers.dispatcher import Dispatcher
from tests.support import ADMIN_TOKEN, READER_TOKEN, WRITER_TOKEN, auth

PROBLEM = "application/problem+json"


@pytest.fixture
def config(config: dict[str, Any], broker_prefix: str) -> dict[str, Any]:
    config["broker"] = {"prefix": broker_prefix, "poll_ms": 50}
    return config


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_admin_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
        yield c


async def add_dead_letter(
    c: Container, queue: str = "wms.outbound", *, body: bytes | None = None, attempts: int = 3
) -> tuple[int, Envelope]:
    env = Envelope.new(
        "inventory.allocated", {"order_id": "o-1"}, occurred_at=c.clock(), sku="MILK", sequence=1
    )
    async with c.pool.acquire() as conn:
        row_id = await dead_letters.record(
            conn,
            queue=queue,
            message_id=str(env.id),
            routing_key="inventory.allocated",
            body=env.to_bytes() if body is None else body,
            headers={ATTEMPT_HEADER: attempts, "traceparent": "00-abc-def-01"},
            error="RuntimeError: the WMS said no",
            attempts=attempts,
        )
    return row_id, env


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    doc: dict[str, Any] = r.json()
    assert (doc["status"], doc["type"]) == (status, slug)
    return doc


ENDPOINTS = [
    ("GET", "/admin/dead-letters"),
    ("POST", "/admin/dead-letters/1/replay"),
    ("POST", "/admin/dead-letters/1/discard"),
    ("GET", "/admin/status"),
    ("POST", "/admin/wms/sync"),
    ("GET", "/admin/wms/sync/1"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[p for _, p in ENDPOINTS])
async def test_every_endpoint_needs_the_admin_scope(
    client: httpx.AsyncClient, container: Container, method: str, path: str
) -> None:
    dead_id, _ = await add_dead_letter(container)
    assert dead_id == 1
    r = await client.request(method, path)
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_problem(await client.request(method, path, headers=auth("x" * 30)), 401, "unauthorized")
    for token in (READER_TOKEN, WRITER_TOKEN):
        doc = assert_problem(
            await client.request(method, path, headers=auth(token)), 403, "forbidden"
        )
        assert "admin" in doc["detail"]
    # Nothing was touched by the refused calls.
    r = await client.get("/admin/dead-letters", headers=auth(ADMIN_TOKEN))
    assert r.status_code == 200
    assert [(i["id"], i["status"]) for i in r.json()["items"]] == [(1, "DEAD")]


async def test_list_dead_letters_filters_and_pages(
    client: httpx.AsyncClient, container: Container
) -> None:
    c = container
    first, env = await add_dead_letter(c, "wms.outbound")
    second, _ = await add_dead_letter(c, "channel.propagation", body=b"\xffnot json", attempts=1)
    third, _ = await add_dead_letter(c, "wms.outbound")
    admin = auth(ADMIN_TOKEN)

    r = await client.get("/admin/dead-letters", headers=admin)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert [i["id"] for i in doc["items"]] == [first, second, third]
    assert doc["next"] is None
    item = doc["items"][0]
    assert item["queue"] == "wms.outbound"
    assert item["message_id"] == str(env.id)
    assert item["routing_key"] == "inventory.allocated"
    assert (item["error"], item["attempts"], item["status"]) == (
        "RuntimeError: the WMS said no",
        3,
        "DEAD",
    )
    assert (item["resolved_at"], item["resolved_by"]) == (None, None)
    unreadable = doc["items"][1]
    assert (unreadable["body"], base64.b64decode(unreadable["raw_body_base64"])) == (
        None,
        b"\xffnot json",
    )

    r = await client.get("/admin/dead-letters", params={"queue": "wms.outbound"}, headers=admin)
    assert [i["id"] for i in r.json()["items"]] == [first, third]

    r = await client.get("/admin/dead-letters", params={"limit": 2}, headers=admin)
    assert [i["id"] for i in r.json()["items"]] == [first, second]
    assert r.json()["next"] == second
    r = await client.get("/admin/dead-letters", params={"limit": 2, "after": second}, headers=admin)
    assert ([i["id"] for i in r.json()["items"]], r.json()["next"]) == ([third], None)

    r = await client.get("/admin/dead-letters", params={"status": "DISCARDED"}, headers=admin)
    assert r.json() == {"items": [], "next": None}
    for bad in ({"status": "GONE"}, {"limit": 0}, {"limit": 501}, {"after": -1}):
        assert_problem(
            await client.get("/admin/dead-letters", params=bad, headers=admin), 422, "validation"
        )


async def test_an_empty_queue_or_cursor_of_the_dead_letters_filters_nothing(
    client: httpx.AsyncClient, container: Container
) -> None:
    # The contract's `GET /admin/dead-letters?queue=&limit=`, as a form or a script
    # with nothing to fill in sends it: every queue's, from the first.
    ids = [(await add_dead_letter(container, q))[0] for q in ("wms.outbound", "wms.sync")]
    admin = auth(ADMIN_TOKEN)
    r = await client.get("/admin/dead-letters?queue=&limit=1&after=", headers=admin)
    assert r.status_code == 200, r.text
    assert ([i["id"] for i in r.json()["items"]], r.json()["next"]) == ([ids[0]], ids[0])
    r = await client.get(f"/admin/dead-letters?queue=&after={ids[0]}", headers=admin)
    assert [i["id"] for i in r.json()["items"]] == [ids[1]]
    r = await client.get("/admin/dead-letters?queue=wms.sync", headers=admin)
    assert [i["id"] for i in r.json()["items"]] == [ids[1]]
    assert_problem(
        await client.get("/admin/dead-letters?after=x", headers=admin), 422, "validation"
    )


async def test_listed_dead_letter_shows_body_and_headers_as_json(
    client: httpx.AsyncClient, container: Container
) -> None:
    _, env = await add_dead_letter(container)
    r = await client.get("/admin/dead-letters", headers=auth(ADMIN_TOKEN))
    (item,) = r.json()["items"]
    assert item["body"] == orjson.loads(env.to_bytes())
    assert item["headers"] == {ATTEMPT_HEADER: 3, "traceparent": "00-abc-def-01"}
    assert item["raw_body_base64"] is None


async def test_discard_then_replay_is_a_conflict_and_unknown_ids_are_not_found(
    client: httpx.AsyncClient, container: Container
) -> None:
    dead_id, _ = await add_dead_letter(container)
    admin = auth(ADMIN_TOKEN)

    r = await client.post(f"/admin/dead-letters/{dead_id}/discard", headers=admin)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["id"], doc["status"], doc["resolved_by"]) == (dead_id, "DISCARDED", "admin")
    assert doc["resolved_at"] is not None
    again = await client.post(f"/admin/dead-letters/{dead_id}/discard", headers=admin)
    assert (again.status_code, again.json()) == (200, doc)

    conflict = assert_problem(
        await client.post(f"/admin/dead-letters/{dead_id}/replay", headers=admin), 409, "conflict"
    )
    assert "DISCARDED" in conflict["detail"]
    for action in ("replay", "discard"):
        missing = assert_problem(
            await client.post(f"/admin/dead-letters/{dead_id + 99}/{action}", headers=admin),
            404,
            "not-found",
        )
        assert str(dead_id + 99) in missing["detail"]
        assert_problem(
            await client.post(f"/admin/dead-letters/abc/{action}", headers=admin), 422, "validation"
        )

    r = await client.get("/admin/dead-letters", params={"status": "DISCARDED"}, headers=admin)
    assert [i["id"] for i in r.json()["items"]] == [dead_id]
    assert (await client.get("/admin/dead-letters", headers=admin)).json()["items"] == []
    status = (await client.get("/admin/status", headers=admin)).json()
    assert status["dead_letters"] == {}
    assert set(status["queues"].values()) == {0}


async def test_replay_puts_the_message_back_on_its_queue(
    client: httpx.AsyncClient, container: Container, broker_prefix: str
) -> None:
    dead_id, env = await add_dead_letter(container)
    admin = auth(ADMIN_TOKEN)

    r = await client.post(f"/admin/dead-letters/{dead_id}/replay", headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["resolved_by"]) == ("REPLAYED", "admin")
    status = (await client.get("/admin/status", headers=admin)).json()
    assert status["queues"][broker_prefix + "wms.outbound"] == 1
    assert status["dead_letters"] == {}
    assert_problem(
        await client.post(f"/admin/dead-letters/{dead_id}/replay", headers=admin), 409, "conflict"
    )
    assert_problem(
        await client.post(f"/admin/dead-letters/{dead_id}/discard", headers=admin), 409, "conflict"
    )
    async with container.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT message_id, headers FROM queue_message")
    assert row["message_id"] == env.id
    assert row["headers"][ATTEMPT_HEADER] == 1
    assert row["headers"]["x-replayed-from"] == dead_id


async def test_a_binary_dead_letter_is_shown_in_base64_and_replayed_byte_for_byte(
    client: httpx.AsyncClient, container: Container
) -> None:
    body = b"\x00\xff binary"
    dead_id, _ = await add_dead_letter(container, "inventory.ingest", body=body)
    admin = auth(ADMIN_TOKEN)
    (item,) = (await client.get("/admin/dead-letters", headers=admin)).json()["items"]
    assert (item["body"], item["raw_body_base64"]) == (None, base64.b64encode(body).decode())

    r = await client.post(f"/admin/dead-letters/{dead_id}/replay", headers=admin)
    assert r.status_code == 200, r.text
    async with container.pool.acquire() as conn:
        sent = await conn.fetchval("SELECT body FROM queue_message")
    assert bytes(sent) == body


async def test_status_shows_the_outbox_backlog_dead_letters_and_queue_depths(
    client: httpx.AsyncClient, container: Container, broker_prefix: str
) -> None:
    c = container
    admin = auth(ADMIN_TOKEN)
    empty = (await client.get("/admin/status", headers=admin)).json()
    assert empty == {
        "outbox": {"pending": 0, "failed": 0, "oldest_pending_seconds": None},
        "dead_letters": {},
        "broker": {"kind": "pgqueue"},
        "queues": {broker_prefix + q.name: 0 for q in QUEUES},
        "wms": {},
        "connectors": {},
        "channels": {},
    }

    await c.stock.receive(Receipt("MILK", 5, "r-1"))  # inventory.received + level_changed
    await add_dead_letter(c, "wms.outbound")
    await add_dead_letter(c, "wms.outbound")
    await add_dead_letter(c, "channel.propagation")
    broker = await c.connected_broker()
    await broker.publish(
        [
            OutgoingMessage(INVENTORY_EVENTS, "inventory.allocated", b"{}", str(uuid.uuid4()))
            for _ in range(3)
        ]
    )
    doc = (await client.get("/admin/status", headers=admin)).json()
    assert doc["outbox"]["pending"] == 2
    assert doc["outbox"]["failed"] == 0
    assert doc["outbox"]["oldest_pending_seconds"] >= 0
    assert doc["dead_letters"] == {"wms.outbound": 2, "channel.propagation": 1}
    assert doc["queues"] == {
        **{broker_prefix + q.name: 0 for q in QUEUES},
        broker_prefix + "wms.outbound": 3,
    }

    assert await Dispatcher(c.pool, broker, c.metrics).dispatch_once() == 2
    doc = (await client.get("/admin/status", headers=admin)).json()
    assert doc["outbox"] == {"pending": 0, "failed": 0, "oldest_pending_seconds": None}
    assert doc["queues"][broker_prefix + "channel.propagation"] == 1
    assert doc["queues"][broker_prefix + "wms.outbound"] == 3
    # The same figures feed the metrics.
    reg = c.metrics.registry
    assert reg.get_sample_value("stockkeeper_outbox_backlog", {}) == 0
    depth = reg.get_sample_value(
        "stockkeeper_queue_depth", {"queue": broker_prefix + "channel.propagation"}
    )
    assert depth == 1


def scraped(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` in a /metrics answer."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return float(sample.value)
    return None


async def test_a_scrape_of_metrics_measures_the_pipes_first(
    client: httpx.AsyncClient, container: Container, broker_prefix: str
) -> None:
    """Queue depths, the outbox backlog and open dead letters are on admin-api's
    /metrics without anyone opening /admin/status, and follow what happens (D-405)."""
    text = (await client.get("/metrics")).text
    for q in QUEUES:
        assert scraped(text, "stockkeeper_queue_depth", {"queue": broker_prefix + q.name}) == 0
        assert scraped(text, "stockkeeper_dead_letters_open", {"queue": q.name}) == 0
    assert scraped(text, "stockkeeper_outbox_backlog") == 0
    assert scraped(text, "stockkeeper_outbox_failed_rows") == 0

    await container.stock.receive(Receipt("MILK", 5, "r-1"))  # two events in the outbox
    broker = await container.connected_broker()
    await broker.publish(
        [OutgoingMessage(INVENTORY_EVENTS, "inventory.allocated", b"{}", str(uuid.uuid4()))]
    )
    dead_id, _ = await add_dead_letter(container, "wms.outbound")
    text = (await client.get("/metrics")).text
    assert scraped(text, "stockkeeper_outbox_backlog") == 2
    assert scraped(text, "stockkeeper_queue_depth", {"queue": broker_prefix + "wms.outbound"}) == 1
    assert scraped(text, "stockkeeper_dead_letters_open", {"queue": "wms.outbound"}) == 1

    # The last open dead letter of a queue dealt with: its gauge shows 0, not 1 forever.
    r = await client.post(f"/admin/dead-letters/{dead_id}/discard", headers=auth(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    text = (await client.get("/metrics")).text
    assert scraped(text, "stockkeeper_dead_letters_open", {"queue": "wms.outbound"}) == 0


# -- force WMS sync -------------------------------------------------------------------

WMS = {"id": "wms-main", "type": "wms", "url": "http://127.0.0.1:1"}


@pytest.fixture
async def wms_client(
    config: dict[str, Any], clock: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Container]]:
    c = await build(Settings.model_validate({**config, "connectors": [WMS]}), clock=clock)
    transport = httpx.ASGITransport(app=create_admin_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        yield http, c
    await c.close()


async def test_force_sync_answers_202_and_shows_its_progress(
    wms_client: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = wms_client
    admin = auth(ADMIN_TOKEN)
    body = {"reason": "cycle count", "requested_by": "ops@shop", "sku": "A", "priority": "high"}
    r = await http.post("/admin/wms/sync", json=body, headers=admin)
    assert r.status_code == 202, r.text
    doc = r.json()
    assert (doc["status"], doc["kind"], doc["priority"], doc["connector"]) == (
        "PENDING",
        "sku",
        "high",
        "wms-main",
    )
    rid = doc["sync_request_id"]
    shown = (await http.get(f"/admin/wms/sync/{rid}", headers=admin)).json()
    assert shown == doc
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    shown = (await http.get(f"/admin/wms/sync/{rid}", headers=admin)).json()
    assert shown["status"] == "IN_PROGRESS"
    status = (await http.get("/admin/status", headers=admin)).json()
    assert status["wms"]["wms-main"]["open_syncs"] == 1
    assert status["wms"]["wms-main"]["outbound_pending"] == 0


async def test_force_sync_with_the_same_idempotency_key_is_one_request(
    wms_client: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = wms_client
    headers = {**auth(ADMIN_TOKEN), "Idempotency-Key": "sync-1"}
    body = {"reason": "r", "requested_by": "o"}
    first = await http.post("/admin/wms/sync", json=body, headers=headers)
    again = await http.post("/admin/wms/sync", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json() == again.json()
    async with c.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM wms_sync_request") == 1
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM domain_event WHERE event_type = 'wms.sync.force'"
            )
            == 1
        )


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        ({"requested_by": "o"}, 422, "validation"),
        ({"reason": "", "requested_by": "o"}, 422, "validation"),
        ({"reason": "r", "requested_by": "o", "priority": "urgent"}, 422, "validation"),
        ({"reason": "r", "requested_by": "o", "sku_batch_id": 0}, 422, "validation"),
        ({"reason": "r", "requested_by": "o", "sku_batch_id": 99}, 404, "not-found"),
        ({"reason": "r", "requested_by": "o", "connector": "nope"}, 422, "validation"),
        ({"reason": "r", "requested_by": "o", "extra": 1}, 422, "validation"),
    ],
)
async def test_bad_force_sync_requests_are_refused_and_store_nothing(
    wms_client: tuple[httpx.AsyncClient, Container],
    body: dict[str, Any],
    status: int,
    slug: str,
) -> None:
    http, c = wms_client
    assert_problem(await http.post("/admin/wms/sync", json=body, headers=auth()), status, slug)
    async with c.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM wms_sync_request") == 0
        assert await conn.fetchval("SELECT count(*) FROM domain_event") == 0


async def test_an_unknown_sync_request_is_not_found(
    wms_client: tuple[httpx.AsyncClient, Container],
) -> None:
    http, _ = wms_client
    assert_problem(await http.get("/admin/wms/sync/42", headers=auth()), 404, "not-found")


async def test_status_shows_each_polled_connectors_cursor_and_circuit(
    config: dict[str, Any], clock: Any
) -> None:
    mp = {"id": "mp", "type": "marketplace", "url": "http://127.0.0.1:1"}
    erp = {"id": "erp", "type": "erp", "dsn": "postgresql+asyncpg://erp@127.0.0.1/erp"}
    c = await build(Settings.model_validate({**config, "connectors": [mp, erp]}), clock=clock)
    try:
        async with c.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO connector_state (connector, circuit, failures, opened_at, last_error) "
                "VALUES ('mp', 'open', 5, now(), 'ConnectorUnavailable: 503')"
            )
            await conn.execute(
                "INSERT INTO source_cursor (connector, token, pages, records) "
                "VALUES ('mp', 'tok-9', 3, 120)"
            )
        transport = httpx.ASGITransport(app=create_admin_app(c))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            doc = (await http.get("/admin/status", headers=auth(ADMIN_TOKEN))).json()
        shown = doc["connectors"]
        assert (shown["mp"]["circuit"], shown["mp"]["consecutive_failures"]) == ("open", 5)
        assert shown["mp"]["last_error"] == "ConnectorUnavailable: 503"
        assert (shown["mp"]["cursor"]["token"], shown["mp"]["cursor"]["records"]) == ("tok-9", 120)
        assert shown["erp"]["circuit"] == "closed"
        assert shown["erp"]["cursor"]["pages"] == 0
    finally:
        await c.close()


async def test_status_shows_a_failing_connectors_last_failure_and_keeps_it(
    config: dict[str, Any], clock: Any
) -> None:
    """A marketplace poll that fails (nothing listens on its port) shows in /admin/status
    as the connector's last failure with its time; a later success keeps it."""
    from stockkeeper.workers.pollers import MarketplacePoller

    mp = {"id": "mp", "type": "marketplace", "url": "http://127.0.0.1:1", "timeout_ms": 500}
    c = await build(Settings.model_validate({**config, "connectors": [mp]}), clock=clock)
    poller = MarketplacePoller(c, c.settings.connectors[0])  # type: ignore[arg-type]
    try:
        transport = httpx.ASGITransport(app=create_admin_app(c))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            before = (await http.get("/admin/status", headers=auth(ADMIN_TOKEN))).json()
            assert before["connectors"]["mp"]["last_failure"] is None
            assert await poller.poll_once() is False
            failed = (await http.get("/admin/status", headers=auth(ADMIN_TOKEN))).json()
            async with poller.breaker.guard():  # a call that succeeds clears nothing
                pass
            after = (await http.get("/admin/status", headers=auth(ADMIN_TOKEN))).json()
        shown = failed["connectors"]["mp"]["last_failure"]
        assert shown is not None
        assert "ConnectorUnavailable" in shown["message"], shown
        assert shown["at"] == clock().isoformat()
        assert after["connectors"]["mp"]["last_failure"] == shown
        assert after["connectors"]["mp"]["consecutive_failures"] == 0
    finally:
        await poller.close()
        await c.close()


async def test_replay_and_discard_take_an_idempotency_key(
    client: httpx.AsyncClient, container: Container
) -> None:
    # Every POST takes an optional Idempotency-Key (contract, section 4): a client
    # retrying a replay whose answer it lost gets the first answer, not a 409, and the
    # message goes back to its queue once.
    dead_id, _ = await add_dead_letter(container)
    other_id, _ = await add_dead_letter(container)
    key = {**auth(ADMIN_TOKEN), "Idempotency-Key": f"replay-{uuid.uuid4().hex}"}

    first = await client.post(f"/admin/dead-letters/{dead_id}/replay", headers=key)
    assert first.status_code == 200, first.text
    again = await client.post(f"/admin/dead-letters/{dead_id}/replay", headers=key)
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["idempotency-replayed"] == "true"
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM queue_message") == 1
    reused = await client.post(f"/admin/dead-letters/{other_id}/discard", headers=key)
    assert_problem(reused, 422, "validation")

    key = {**auth(ADMIN_TOKEN), "Idempotency-Key": f"discard-{uuid.uuid4().hex}"}
    gone = await client.post(f"/admin/dead-letters/{other_id}/discard", headers=key)
    assert (gone.status_code, gone.json()["status"]) == (200, "DISCARDED")
    replayed = await client.post(f"/admin/dead-letters/{other_id}/discard", headers=key)
    assert (replayed.json(), replayed.headers["idempotency-replayed"]) == (gone.json(), "true")


async def test_the_counters_alerts_watch_start_at_zero_for_what_is_configured(
    wms_client: tuple[httpx.AsyncClient, Container],
) -> None:
    """A series that first appears at 1 has no earlier sample, and Prometheus'
    increase() misses that first oversell, shortfall or dead letter: they exist at 0
    from the start for every queue and configured connector (D-409)."""
    http, _ = wms_client
    text = (await http.get("/metrics")).text
    for q in QUEUES:
        assert scraped(text, "stockkeeper_dead_letters_total", {"queue": q.name}) == 0
    assert scraped(text, "stockkeeper_oversell_total", {"source": "wms:wms-main"}) == 0
    assert scraped(text, "stockkeeper_wms_shortfalls_total", {"connector": "wms-main"}) == 0


async def test_a_refused_wms_row_is_not_replayed_and_stays_dead(
    wms_client: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = wms_client
    admin = auth(ADMIN_TOKEN)
    # A WMS row the sync refused: the WMS's data, not a message of the wms.sync queue.
    r = await http.post(
        "/admin/wms/sync", json={"reason": "count", "requested_by": "ops"}, headers=admin
    )
    assert r.status_code == 202, r.text
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    await c.wms.apply_page(
        job, [], [Rejected({"sku": "N", "on_hand": -1}, "on_hand: must be >= 0")], cursor=None
    )
    async with c.pool.acquire() as conn:
        row_id = await conn.fetchval("SELECT id FROM dead_letter WHERE queue = 'wms.sync'")
    doc = assert_problem(
        await http.post(f"/admin/dead-letters/{row_id}/replay", headers=admin), 409, "conflict"
    )
    assert "correct it in the WMS" in doc["detail"]
    async with c.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM queue_message") == 0
        assert await conn.fetchval("SELECT status FROM dead_letter") == "DEAD"
    # Discarding it is what is left to do once the WMS is put right, and works.
    r = await http.post(f"/admin/dead-letters/{row_id}/discard", headers=admin)
    assert (r.status_code, r.json()["status"]) == (200, "DISCARDED")
