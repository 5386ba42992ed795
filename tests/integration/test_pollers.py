"""The pollers on a real database: the ERP keyset poller against the sandbox ERP (a
separate PostgreSQL database), the marketplace poller and its circuit breaker against
the sandbox marketplace over TCP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.dialects import mssql, postgresql

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import ErpConnectorConfig, MarketplaceConnectorConfig, Settings
from stockkeeper.connectors.erp import Position, page_query
from stockkeeper.workers.pollers import ErpPoller, MarketplacePoller
from stockkeeper_sandbox.erp import ErpSandbox
from stockkeeper_sandbox.marketplace import MarketplaceState
from stockkeeper_sandbox.server import SandboxServer


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def container_with(
    config: dict[str, Any], clock: Any, *connectors: dict[str, Any]
) -> Container:
    return await build(
        Settings.model_validate({**config, "connectors": list(connectors)}), clock=clock
    )


async def queued_levels(c: Container) -> list[tuple[str, str, int]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload::text AS p FROM domain_event "
            "WHERE event_type LIKE 'ingest.%' ORDER BY id"
        )
    return [
        (lv["sku"], lv["location"], lv["on_hand"])
        for r in rows
        for lv in json.loads(r["p"])["levels"]
    ]


async def test_equal_timestamps_across_page_boundaries_skip_nothing(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    await erp.seed(203, ties=50, seed=1)  # 50 rows share each timestamp; pages of 7
    first = await erp.rows()
    # One SKU in two warehouses at one instant: the keyset must tell them apart.
    at = first[-1]["last_modified"] + timedelta(seconds=1)
    await erp.set("TWIN", 1, at=at, warehouse="WH-A")
    await erp.set("TWIN", 2, at=at, warehouse="WH-B")
    cfg = {
        "id": "erp-main",
        "type": "erp",
        "dsn": sqlalchemy_url(erp.reader_url),
        "page_size": 7,
    }
    c = await container_with(config, clock, cfg)
    try:
        (settings,) = c.settings.connectors_of(ErpConnectorConfig)
        poller = ErpPoller(c, settings)
        pages = 0
        while await poller.poll_once():
            pages += 1
        assert not await poller.poll_once()  # caught up: nothing more, nothing again
        await poller.close()
        got = await queued_levels(c)
        want = [(r["sku"], r["location"], r["on_hand"]) for r in await erp.rows()]
        assert sorted(got) == sorted(want)
        assert len(got) == len(set(got)) == 205
        assert pages == 205 // 7
        # New changes later are read from where the cursor stands, and only they.
        changed = await erp.mutate(9, seed=2)
        poller = ErpPoller(c, settings)
        while await poller.poll_once():
            pass
        await poller.close()
        later = (await queued_levels(c))[205:]
        assert sorted(s for s, _, _ in later) == sorted(changed)
        m = c.metrics.registry.get_sample_value
        assert m("stockkeeper_source_records_read_total", {"connector": "erp-main"}) == 214
    finally:
        await c.close()


def test_the_keyset_query_is_portable_to_sql_server() -> None:
    after = Position(datetime(2030, 1, 1, tzinfo=UTC), "A", "default")
    stmt = page_query("dbo.stock_changes", after, 500)
    ms = str(stmt.compile(dialect=mssql.dialect()))
    pg = str(stmt.compile(dialect=postgresql.dialect()))
    assert "TOP" in ms or "FETCH" in ms, ms
    assert "LIMIT" in pg, pg
    for sql in (ms, pg):
        assert "dbo.stock_changes" in sql
        assert "ORDER BY" in sql
        assert "2030" not in sql  # values are bound, never written into the SQL


async def test_bad_erp_rows_are_dead_letters_and_the_rest_is_queued(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    await erp.set("GOOD", 5)
    await erp.set("NEG", -2)
    await erp.set("CHEAP", 1, price="-1.00")
    cfg = {"id": "erp-main", "type": "erp", "dsn": sqlalchemy_url(erp.reader_url)}
    c = await container_with(config, clock, cfg)
    try:
        poller = ErpPoller(c, c.settings.connectors_of(ErpConnectorConfig)[0])
        await poller.poll_once()
        await poller.close()
        assert [s for s, _, _ in await queued_levels(c)] == ["GOOD"]
        async with c.pool.acquire() as conn:
            errors = [r["error"] for r in await conn.fetch("SELECT error FROM dead_letter")]
        assert len(errors) == 2
        assert any("on_hand" in e for e in errors)
        assert any("price" in e for e in errors)
    finally:
        await c.close()


async def test_polling_pauses_while_the_ingest_backlog_is_high(
    config: dict[str, Any], clock: Any, erp: ErpSandbox
) -> None:
    await erp.seed(30, seed=3)
    cfg = {
        "id": "erp-main",
        "type": "erp",
        "dsn": sqlalchemy_url(erp.reader_url),
        "page_size": 10,
        "backlog_high_water": 1,
    }
    c = await container_with(config, clock, cfg)
    try:
        poller = ErpPoller(c, c.settings.connectors_of(ErpConnectorConfig)[0])
        await poller.poll_once()
        await poller.poll_once()  # two messages queued, none applied
        assert await poller.backlog() == 2
        assert not await poller.tick()
        m = c.metrics.registry.get_sample_value
        assert m("stockkeeper_poll_paused_total", {"connector": "erp-main"}) == 1
        assert len(await queued_levels(c)) == 20  # the third page was not read
        await poller.close()
    finally:
        await c.close()


async def test_the_circuit_opens_on_a_failing_marketplace_and_closes_when_it_recovers(
    config: dict[str, Any], clock: Any, market: tuple[MarketplaceState, SandboxServer]
) -> None:
    state, server = market
    state.sell("t-1", "A", 2)
    cfg = {
        "id": "mp",
        "type": "marketplace",
        "url": server.url,
        "max_attempts": 1,
        "failure_threshold": 3,
        "cooldown_s": 30,
    }
    c = await container_with(config, clock, cfg)
    gauge = c.metrics.registry.get_sample_value
    try:
        poller = MarketplacePoller(c, c.settings.connectors_of(MarketplaceConnectorConfig)[0])
        httpx.put(server.url + "/_sandbox/faults", json={"error_rate": 1.0}).raise_for_status()
        for _ in range(3):
            assert not await poller.poll_once()
        assert gauge("stockkeeper_circuit_state", {"connector": "mp"}) == 2  # open
        calls = httpx.get(server.url + "/_sandbox/calls").json()["total"]
        for _ in range(5):  # open: no call reaches the failing marketplace
            await poller.poll_once()
        assert httpx.get(server.url + "/_sandbox/calls").json()["total"] == calls
        async with c.pool.acquire() as conn:
            shown = await conn.fetchrow("SELECT circuit, failures FROM connector_state")
        assert (shown["circuit"], shown["failures"]) == ("open", 3)
        # The marketplace recovers; after the cool-down one poll goes through and closes it.
        httpx.delete(server.url + "/_sandbox/faults").raise_for_status()
        clock.advance(31)
        await poller.poll_once()
        assert gauge("stockkeeper_circuit_state", {"connector": "mp"}) == 0
        async with c.pool.acquire() as conn:
            shown = await conn.fetchrow("SELECT circuit, failures FROM connector_state")
            queued = await conn.fetchval(
                "SELECT count(*) FROM domain_event WHERE event_type = 'ingest.mp'"
            )
        assert (shown["circuit"], shown["failures"]) == ("closed", 0)
        assert queued == 1  # the sale, read once the circuit closed
        await poller.close()
    finally:
        await c.close()


async def test_a_half_open_failure_opens_the_circuit_again(
    config: dict[str, Any], clock: Any, market: tuple[MarketplaceState, SandboxServer]
) -> None:
    _, server = market
    cfg = {
        "id": "mp",
        "type": "marketplace",
        "url": server.url,
        "max_attempts": 1,
        "failure_threshold": 1,
        "cooldown_s": 10,
    }
    c = await container_with(config, clock, cfg)
    try:
        poller = MarketplacePoller(c, c.settings.connectors_of(MarketplaceConnectorConfig)[0])
        httpx.put(server.url + "/_sandbox/faults", json={"error_rate": 1.0}).raise_for_status()
        await poller.poll_once()
        clock.advance(11)
        await poller.poll_once()  # half-open, fails: open again, with a fresh cool-down
        async with c.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT circuit, opened_at FROM connector_state")
        assert row["circuit"] == "open"
        assert row["opened_at"] == clock()
        await poller.close()
    finally:
        await c.close()


async def test_a_feed_whose_token_does_not_advance_ends_the_round_as_a_failure(
    config: dict[str, Any], clock: Any, market: tuple[MarketplaceState, SandboxServer]
) -> None:
    """D-471: a marketplace answering every page with the token it was asked with and
    "more to come" was read back to back for ever, inside one round. Now the round ends
    at the page that does not advance: nothing of it queued, the cursor where it was,
    the failure the connector's last_failure and counted by its circuit breaker."""
    state, server = market
    state.sell("t-1", "A", 2)
    cfg = {
        "id": "mp",
        "type": "marketplace",
        "url": server.url,
        "max_attempts": 1,
        "failure_threshold": 2,
        "cooldown_s": 30,
    }
    c = await container_with(config, clock, cfg)
    gauge = c.metrics.registry.get_sample_value

    async def shown() -> Any:
        async with c.pool.acquire() as conn:
            return await conn.fetchrow(
                "SELECT s.circuit, s.failures, s.last_failure, c.token,"
                " (SELECT count(*) FROM domain_event WHERE event_type = 'ingest.mp') AS queued"
                " FROM connector_state s LEFT JOIN source_cursor c USING (connector)"
            )

    try:
        poller = MarketplacePoller(c, c.settings.connectors_of(MarketplaceConnectorConfig)[0])
        httpx.put(server.url + "/_sandbox/feed", json={"stuck": True}).raise_for_status()
        # The first page names a token; the page after it names that token again.
        rounds = []
        for _ in range(4):  # what the poller's loop does: the next page while "more"
            more = await poller.tick()
            rounds.append(more)
            if not more:
                break
        assert rounds == [True, False]
        first = await shown()
        assert first is not None
        assert (first["circuit"], first["failures"], first["queued"]) == ("closed", 1, 1)
        assert "did not advance" in first["last_failure"], first["last_failure"]
        stuck_at = first["token"]
        assert stuck_at is not None
        # The next round fails alike, and the breaker opens as for any failure.
        assert not await poller.tick()
        again = await shown()
        assert (again["circuit"], again["failures"], again["token"]) == ("open", 2, stuck_at)
        assert again["queued"] == 1
        assert gauge("stockkeeper_circuit_state", {"connector": "mp"}) == 2
        # The marketplace's paging is mended: after the cool-down the feed moves on.
        httpx.put(server.url + "/_sandbox/feed", json={"stuck": False}).raise_for_status()
        state.sell("t-2", "A", 1)
        clock.advance(31)
        assert not await poller.tick()
        healed = await shown()
        assert (healed["circuit"], healed["failures"]) == ("closed", 0)
        assert healed["token"] == state.head() != stuck_at
        assert healed["queued"] == 2
        await poller.close()
    finally:
        await c.close()


async def test_a_round_ends_after_max_pages_per_round_without_a_failure(
    config: dict[str, Any], clock: Any, market: tuple[MarketplaceState, SandboxServer]
) -> None:
    """D-471: a feed that advances but always has more (a backlog, or a marketplace
    that never says it is done) is read at most max_pages_per_round pages back to back;
    the next round goes on from the cursor after the interval."""
    state, server = market
    for i in range(5):
        state.sell(f"t-{i}", "A", 1)  # a sale and a level each: 10 changes
    cfg = {
        "id": "mp",
        "type": "marketplace",
        "url": server.url,
        "page_size": 2,
        "max_pages_per_round": 3,
    }
    c = await container_with(config, clock, cfg)
    try:
        poller = MarketplacePoller(c, c.settings.connectors_of(MarketplaceConnectorConfig)[0])
        assert [await poller.tick() for _ in range(3)] == [True, True, False]
        assert [await poller.tick() for _ in range(2)] == [True, False]  # the rest
        async with c.pool.acquire() as conn:
            token = await conn.fetchval("SELECT token FROM source_cursor")
            failure = await conn.fetchval("SELECT last_failure FROM connector_state")
        assert token == state.head()
        assert failure is None
        await poller.close()
    finally:
        await c.close()
