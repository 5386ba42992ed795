"""The WMS workers on a real database against the sandbox WMS over TCP: the outbound
handler on real reservation events, batched sends, retries, dead letters and their
replay; sync jobs that resume after a crash, incremental syncs and token refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stockkeeper.api.admin import create_admin_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings, WmsConnectorConfig
from stockkeeper.connectors.wms import WmsClient
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.wms import SyncStatus
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.store import wms as repo
from stockkeeper.store.wms import CallRow
from stockkeeper.wiring import _keep_call
from stockkeeper.workers.wms_outbound import WmsOutboundWorker
from stockkeeper.workers.wms_sync import WmsSyncWorker
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.wms import WmsState
from tests.support import ADMIN_TOKEN, auth

NAME = "wms-main"


class Rig:
    """A container with one WMS connector, and both workers on the sandbox."""

    def __init__(self, c: Container, cfg: WmsConnectorConfig) -> None:
        self.c = c
        self.cfg = cfg
        self.calls: dict[str, list[CallRow]] = {NAME: []}
        self.out_client = WmsClient(
            cfg, metrics=c.metrics, on_call=lambda r: _keep_call(self.calls[NAME], r)
        )
        self.sync_calls: dict[str, list[CallRow]] = {NAME: []}
        self.sync_client = WmsClient(
            cfg, metrics=c.metrics, on_call=lambda r: _keep_call(self.sync_calls[NAME], r)
        )
        self.outbound = WmsOutboundWorker(
            c.wms, {NAME: self.out_client}, [cfg], c.pool, c.metrics, c.clock, self.calls
        )
        self.sync = WmsSyncWorker(
            c.wms, {NAME: self.sync_client}, [cfg], c.metrics, self.sync_calls
        )
        self.handle = self.outbound.handler()

    async def close(self) -> None:
        await self.out_client.aclose()
        await self.sync_client.aclose()

    async def deliver_events(self) -> int:
        """Feed every reservation event in the outbox to the outbound handler, as the
        consumer would (one transaction each)."""
        async with self.c.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT event_id, event_type, payload, occurred_at FROM domain_event "
                "WHERE event_type LIKE 'inventory.%' AND sku IS NULL ORDER BY id"
            )
        for r in rows:
            env = Envelope.new(
                r["event_type"], r["payload"], occurred_at=r["occurred_at"], id_=r["event_id"]
            )
            async with self.c.pool.acquire() as conn, conn.transaction():
                await self.handle(conn, env)
        return len(rows)

    async def items(self) -> list[dict[str, Any]]:
        async with self.c.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT action, status, attempts, quantity, last_error FROM wms_outbound_item "
                "ORDER BY id"
            )
        return [dict(r) for r in rows]

    async def make_due(self) -> None:
        async with self.c.pool.acquire() as conn:
            await conn.execute("UPDATE wms_outbound_item SET next_attempt_at = now()")


@pytest.fixture
async def rig_factory(
    config: dict[str, Any], clock: Any, wms: tuple[WmsState, SandboxServer]
) -> AsyncIterator[Any]:
    made: list[Rig] = []

    async def make(**overrides: Any) -> Rig:
        connector = {
            "id": NAME,
            "type": "wms",
            "url": wms[1].url,
            "rate_limit_rps": 1000,
            "timeout_ms": 1000,
            "max_attempts": 2,
            "backoff_base_ms": 10,
            "backoff_max_ms": 50,
            "outbound_wait_ms": 0,
            "incremental_interval_s": 0,
            **overrides,
        }
        settings = Settings.model_validate({**config, "connectors": [connector]})
        c = await build(settings, clock=clock)
        rig = Rig(c, settings.connectors_of(WmsConnectorConfig)[0])
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.close()
        await rig.c.close()


async def orders(c: Container) -> None:
    """Three orders over two lots: one stays, one is released, one confirmed."""
    await c.stock.receive(Receipt("A", 5, "r-1", None, "L1", None))
    await c.stock.receive(Receipt("A", 5, "r-2", None, "L2", None))
    for i, qty in enumerate((3, 4, 2)):
        await c.reservations.reserve(ReserveRequest(f"o-{i}", (OrderLine("A", qty),)))
    await c.reservations.release("o-1")
    await c.reservations.confirm("o-2")


async def test_real_reservation_events_reach_the_wms_books_in_one_batch(
    rig_factory: Any, wms: tuple[WmsState, SandboxServer]
) -> None:
    state, _ = wms
    rig: Rig = await rig_factory(outbound_batch_size=50)
    await orders(rig.c)
    assert await rig.deliver_events() == 5
    await rig.deliver_events()  # a redelivery of every event adds nothing
    assert [i["action"] for i in await rig.items()] == [
        "allocate",  # o-0, lot L1
        "allocate",  # o-1, L1 (2) ...
        "allocate",  # ... and L2 (2)
        "allocate",  # o-2, L2
        "release",
        "release",
        "confirm",
    ]
    assert await rig.outbound.flush_once(NAME) == 7
    assert await rig.outbound.flush_once(NAME) == 0
    assert {i["status"] for i in await rig.items()} == {"SENT"}
    books = state.books()
    held = {b["lot_number"]: b["allocated"] for b in books["batches"]}
    (a,) = await rig.c.stock.get_many(["A"])
    assert sum(held.values()) == a.reserved + a.committed == 5
    async with rig.c.pool.acquire() as conn:
        audit_rows = await conn.fetch("SELECT operation, outcome, items FROM wms_call")
    assert [(r["operation"], r["outcome"], r["items"]) for r in audit_rows] == [("send", "ok", 7)]
    m = rig.c.metrics.registry.get_sample_value
    assert m("stockkeeper_wms_outbound_batch_size_sum", {"connector": NAME}) == 7
    assert m("stockkeeper_wms_outbound_items_total", {"connector": NAME, "result": "applied"}) == 7
    assert (
        m(
            "stockkeeper_connector_calls_total",
            {"connector": NAME, "operation": "send", "outcome": "ok"},
        )
        == 1
    )


async def test_a_partial_batch_waits_for_more_until_its_time_is_up(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(outbound_batch_size=50, outbound_wait_ms=60_000)
    await orders(rig.c)
    await rig.deliver_events()
    waiting = await rig.outbound.flush_once(NAME)
    assert waiting < 0  # minus the milliseconds left to wait
    assert {i["status"] for i in await rig.items()} == {"PENDING"}


async def test_a_wms_that_keeps_failing_means_retries_then_a_dead_letter_that_replays(
    rig_factory: Any, wms: tuple[WmsState, SandboxServer]
) -> None:
    state, server = wms
    rig: Rig = await rig_factory(outbound_max_attempts=2, outbound_backoff_base_ms=60_000)
    await orders(rig.c)
    await rig.deliver_events()
    server.stop()
    assert await rig.outbound.flush_once(NAME) == 7
    items = await rig.items()
    assert {(i["status"], i["attempts"]) for i in items} == {("PENDING", 1)}
    assert all("connect" in (i["last_error"] or "") for i in items), items
    assert await rig.outbound.flush_once(NAME) == 0  # backing off: nothing due
    await rig.make_due()
    assert await rig.outbound.flush_once(NAME) == 7
    assert {i["status"] for i in await rig.items()} == {"DEAD"}
    async with rig.c.pool.acquire() as conn:
        (dead,) = await conn.fetch("SELECT queue, raw_body, error FROM dead_letter")
        tries = await conn.fetchval("SELECT count(*) FROM wms_call WHERE outcome = 'connect_error'")
    assert dead["queue"] == "wms.outbound"
    assert "WMS unavailable after 2 sends" in dead["error"]
    assert tries == 4  # two sends, each with the connector's two tries
    # The WMS is back; the operator replays the dead letter (the consumer path).
    server.start()
    replay = Envelope.parse(bytes(dead["raw_body"]))
    async with rig.c.pool.acquire() as conn, conn.transaction():
        await rig.handle(conn, replay)
    assert {(i["status"], i["attempts"]) for i in await rig.items()} == {("PENDING", 0)}
    assert await rig.outbound.flush_once(NAME) == 7
    assert {i["status"] for i in await rig.items()} == {"SENT"}
    assert len(state.books()["applied"]) == 7


async def test_an_orders_release_waits_while_its_allocate_backs_off(
    rig_factory: Any, wms: tuple[WmsState, SandboxServer]
) -> None:
    """D-477: the WMS hears of one order's events in the order they happened, even when
    the first send failed; other orders do not wait for it."""
    state, server = wms
    rig: Rig = await rig_factory(outbound_backoff_base_ms=60_000)
    c = rig.c
    await c.stock.receive(Receipt("A", 5, "r-1", None, "L1", None))
    await c.reservations.reserve(ReserveRequest("o-0", (OrderLine("A", 3),)))
    await rig.deliver_events()
    server.stop()
    assert await rig.outbound.flush_once(NAME) == 1
    assert [(i["action"], i["status"], i["attempts"]) for i in await rig.items()] == [
        ("allocate", "PENDING", 1)
    ]
    await c.reservations.release("o-0")
    await c.reservations.reserve(ReserveRequest("o-1", (OrderLine("A", 1),)))
    await rig.deliver_events()
    server.start()
    # o-0's allocate backs off for a minute: its release waits, o-1's allocate goes.
    assert await rig.outbound.flush_once(NAME) == 1
    assert await rig.outbound.flush_once(NAME) == 0
    assert [(i["action"], i["status"]) for i in await rig.items()] == [
        ("allocate", "PENDING"),
        ("release", "PENDING"),
        ("allocate", "SENT"),
    ]
    await rig.make_due()
    assert await rig.outbound.flush_once(NAME) == 2  # allocate, then release, one batch
    assert {i["status"] for i in await rig.items()} == {"SENT"}
    applied = [(i["order_id"], i["action"]) for i in state.books()["applied"].values()]
    assert applied == [("o-1", "allocate"), ("o-0", "allocate"), ("o-0", "release")]
    held = {b["lot_number"]: b["allocated"] for b in state.books()["batches"]}
    assert held == {"L1": 1}


async def test_an_orders_release_waits_while_another_sender_holds_its_allocate(
    rig_factory: Any,
) -> None:
    """The race D-477's last check covers: another sender has locked the allocate in
    its claim but not yet leased it; this sender must not send the release meanwhile."""
    rig: Rig = await rig_factory()
    c = rig.c
    await c.stock.receive(Receipt("A", 5, "r-1", None, "L1", None))
    await c.reservations.reserve(ReserveRequest("o-0", (OrderLine("A", 3),)))
    await c.reservations.release("o-0")
    await rig.deliver_events()
    async with c.pool.acquire() as other, other.transaction():
        await other.execute("SELECT id FROM wms_outbound_item WHERE action = 'allocate' FOR UPDATE")
        assert await rig.outbound.flush_once(NAME) == 0
    assert {i["status"] for i in await rig.items()} == {"PENDING"}
    assert await rig.outbound.flush_once(NAME) == 2


async def test_a_batch_the_wms_refuses_is_sent_item_by_item(
    rig_factory: Any, wms: tuple[WmsState, SandboxServer]
) -> None:
    _, server = wms
    rig: Rig = await rig_factory()
    await orders(rig.c)
    await rig.deliver_events()
    refuse = {"error_rate": 1.0, "error_status": 422}
    assert httpx.put(server.url + "/_sandbox/faults", json=refuse).status_code == 200
    await rig.outbound.flush_once(NAME)
    assert {i["status"] for i in await rig.items()} == {"DEAD"}
    async with rig.c.pool.acquire() as conn:
        dead = await conn.fetchval("SELECT count(*) FROM dead_letter")
        calls = await conn.fetch("SELECT items FROM wms_call ORDER BY id")
    assert dead == 7  # each item on its own, with the WMS's reason
    assert [c["items"] for c in calls] == [7] + [1] * 7


async def test_a_full_sync_killed_midway_resumes_from_its_last_page(
    rig_factory: Any, wms: tuple[WmsState, SandboxServer]
) -> None:
    state, _ = wms
    state.seed(250, skus=50, seed=4)
    rig: Rig = await rig_factory(page_size=100)
    c = rig.c
    await c.wms.request_sync(reason="count", requested_by="ops")
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    # The first worker got one page in, then died.
    token = await rig.sync_client.head_token()
    await c.wms.set_start_token(job, token)
    page = await rig.sync_client.stock_page()
    from stockkeeper.workers.wms_sync import counted

    await c.wms.apply_page(job, [counted(r) for r in page.items], cursor=page.next_cursor)
    async with c.pool.acquire() as conn:
        await conn.execute("UPDATE wms_sync_request SET heartbeat_at = now() - interval '1 hour'")
    resumed = await c.wms.claim(stale_after_s=60)
    assert resumed is not None
    assert (resumed.id, resumed.cursor, resumed.start_token) == (job.id, page.next_cursor, token)
    assert await rig.sync.run_job(resumed) is SyncStatus.DONE
    doc = await c.wms.get_request(job.id)
    assert (doc.pages, doc.rows_seen) == (3, 250)  # the first page was not read again
    async with c.pool.acquire() as conn:
        audited = await conn.fetch("SELECT operation, outcome FROM wms_call ORDER BY id")
    # Every call through the client is in the audit table when the job ends (here the
    # first worker's two calls too: it ran in this process).
    assert [(r["operation"], r["outcome"]) for r in audited] == [
        ("head_token", "ok"),
        ("stock_page", "ok"),
        ("stock_page", "ok"),
        ("stock_page", "ok"),
    ]
    assert await c.wms.sync_token(NAME) == token
    async with c.pool.acquire() as conn:
        ours = await conn.fetchval("SELECT sum(on_hand) FROM sku_batch")
    assert ours == sum(r["on_hand"] for r in state.rows())


async def test_incremental_sync_reads_only_what_changed_and_falls_back_when_refused(
    rig_factory: Any, wms: tuple[WmsState, SandboxServer], clock: Any
) -> None:
    state, _ = wms
    state.seed(40, skus=10, seed=8)
    rig: Rig = await rig_factory()
    c = rig.c
    first = await c.wms.schedule_incremental(NAME, 60)  # no token yet: reads everything
    assert first is not None
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    assert await rig.sync.run_job(job) is SyncStatus.DONE
    assert (await c.wms.get_request(job.id)).rows_seen == 40
    # That was a full read, and the status says so.
    st = (await c.wms.status())[NAME]
    assert st.last_full_sync_at is not None
    assert st.last_incremental_sync_at is None
    first_full = st.last_full_sync_at
    row = state.rows()[7]
    state.put(row["sku"], row["location"], row["lot_number"], row["on_hand"] + 5)
    clock.advance(61)
    assert await c.wms.schedule_incremental(NAME, 60) is not None
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    assert await rig.sync.run_job(job) is SyncStatus.DONE
    doc = await c.wms.get_request(job.id)
    assert (doc.rows_seen, doc.adjustments) == (1, 1)
    st = (await c.wms.status())[NAME]
    assert st.last_full_sync_at == first_full
    assert st.last_incremental_sync_at is not None
    m = c.metrics.registry.get_sample_value
    labels = {"connector": NAME, "kind": "incremental", "result": "done"}
    assert m("stockkeeper_wms_sync_duration_seconds_count", labels) == 2
    assert m("stockkeeper_wms_adjustments_total", {"connector": NAME, "quantity": "on_hand"}) > 1
    assert m("stockkeeper_wms_rows_synced_total", {"connector": NAME}) == 41
    # The WMS lost its change log (a token from another life): a full read instead.
    async with c.pool.acquire() as conn:
        await repo.save_token(conn, NAME, "not-a-token-it-knows", "incremental")
    clock.advance(61)
    assert await c.wms.schedule_incremental(NAME, 60) is not None
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    assert await rig.sync.run_job(job) is SyncStatus.DONE
    assert (await c.wms.get_request(job.id)).rows_seen == 40
    assert await c.wms.sync_token(NAME) != "not-a-token-it-knows"
    st = (await c.wms.status())[NAME]
    assert st.last_full_sync_at is not None
    assert st.last_full_sync_at > first_full


async def test_a_sync_request_shows_the_wms_total_a_percentage_and_an_eta(
    rig_factory: Any, wms: tuple[WmsState, SandboxServer]
) -> None:
    from datetime import timedelta

    from stockkeeper.api.admin import create_admin_app
    from stockkeeper.workers.wms_sync import counted
    from tests.support import auth

    state, _ = wms
    state.seed(250, skus=50, seed=4)
    rig: Rig = await rig_factory(page_size=100)
    c = rig.c
    req = await c.wms.request_sync(reason="count", requested_by="ops")
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    page = await rig.sync_client.stock_page()
    assert page.total == 250  # the sandbox says how big the snapshot is
    await c.wms.apply_page(
        job, [counted(r) for r in page.items], cursor=page.next_cursor, total=page.total
    )
    doc = await c.wms.get_request(req.id)
    assert doc.started_at is not None
    # 100 of 250 rows in 20 s: 150 more take 30 s at that rate.
    c.clock.now = doc.started_at + timedelta(seconds=20)  # type: ignore[attr-defined]
    app = create_admin_app(c)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin"
    ) as client:
        r = await client.get(f"/admin/wms/sync/{req.id}", headers=auth())
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["status"], body["total"], body["percent"], body["eta_seconds"]) == (
            "IN_PROGRESS",
            250,
            40.0,
            30.0,
        )
        resumed = await c.wms.claim(stale_after_s=0)
        assert resumed is not None
        assert await rig.sync.run_job(resumed) is SyncStatus.DONE
        body = (await client.get(f"/admin/wms/sync/{req.id}", headers=auth())).json()
    assert (body["total"], body["percent"], body["eta_seconds"]) == (250, 100.0, 0.0)


async def test_a_failed_sync_is_logged_at_error_with_its_reason(rig_factory: Any) -> None:
    import structlog

    rig: Rig = await rig_factory(url="http://127.0.0.1:9", max_attempts=1)
    c = rig.c
    req = await c.wms.request_sync(reason="count", requested_by="ops")
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    with structlog.testing.capture_logs() as logs:
        assert await rig.sync.run_job(job) is SyncStatus.FAILED
    (failed,) = [e for e in logs if e["event"] == "wms_sync.job_failed"]
    assert failed["log_level"] == "error"
    assert failed["request"] == req.id
    assert "WMS unavailable" in failed["error"]
    doc = await c.wms.get_request(req.id)
    assert (doc.status, doc.progress(c.clock()).percent) == ("FAILED", None)


async def test_a_failed_sync_shows_as_the_wms_last_failure_in_the_status(
    rig_factory: Any, clock: Any, wms: tuple[WmsState, SandboxServer]
) -> None:
    _, server = wms
    rig: Rig = await rig_factory()
    c = rig.c
    transport = httpx.ASGITransport(app=create_admin_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:

        async def shown() -> Any:
            r = await http.get("/admin/status", headers=auth(ADMIN_TOKEN))
            assert r.status_code == 200, r.text
            return r.json()["wms"][NAME]["last_failure"]

        assert await shown() is None
        server.stop()
        await c.wms.request_sync(reason="count", requested_by="ops")
        job = await c.wms.claim(stale_after_s=60)
        assert job is not None
        assert await rig.sync.run_job(job) is SyncStatus.FAILED
        failure = await shown()
        assert failure["message"].startswith(f"sync {job.id} (full) failed: WMS unavailable")
        assert failure["at"] == clock().isoformat()
        # Back up, the next sync succeeds; the failure stays on the page.
        server.start()
        await c.wms.request_sync(reason="count", requested_by="ops")
        again = await c.wms.claim(stale_after_s=60)
        assert again is not None
        assert await rig.sync.run_job(again) is SyncStatus.DONE
        assert await shown() == failure
