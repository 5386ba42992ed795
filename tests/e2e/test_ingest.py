"""Ingestion end to end: ``stockkeeper run pollers``, ``run dispatcher`` and ``run ingest``
as real processes on PostgreSQL and RabbitMQ, reading the sandbox ERP (a separate
PostgreSQL database); and ``stockkeeper up`` taking signed generic-webhook sales beyond
what is on hand (no unit vanishes: issue 13 points 5 and 6)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stockkeeper.connectors.signatures import generic_headers
from stockkeeper_sandbox.erp import ErpSandbox
from tests.e2e.helpers import clean_env, receive, run_cli, stock_of
from tests.e2e.messaging_helpers import Child, Children, wait_until
from tests.support import ADMIN_TOKEN, auth, base_config, free_port

pytestmark = pytest.mark.slow


async def fetch(db_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def queued(db_url: str) -> list[tuple[str, str, int]]:
    rows = await fetch(
        db_url,
        "SELECT payload::text AS p FROM domain_event WHERE event_type = 'ingest.erp-main' "
        "ORDER BY id",
    )
    return [
        (x["sku"], x["location"], x["on_hand"]) for r in rows for x in json.loads(r["p"])["levels"]
    ]


async def books(db_url: str) -> dict[tuple[str, str], int]:
    rows = await fetch(
        db_url, "SELECT sku, location, sum(on_hand) AS n FROM sku_batch GROUP BY 1, 2"
    )
    return {(r["sku"], r["location"]): int(r["n"]) for r in rows}


async def test_a_poller_killed_mid_page_resumes_and_nothing_is_skipped_or_applied_twice(
    erp: ErpSandbox, db_url: str, rabbit_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    await erp.seed(2_000, ties=50, seed=9)
    cfg = base_config(
        db_url,
        broker={"url": rabbit_url, "prefix": broker_prefix},
        connectors=[
            {
                "id": "erp-main",
                "type": "erp",
                "dsn": erp.reader_url.replace("postgresql://", "postgresql+asyncpg://", 1),
                "page_size": 100,
                "interval_s": 0.2,
                "backlog_high_water": 10_000,
            }
        ],
    )
    with Children(tmp_path) as kids:
        # The poller dies inside the transaction of its third page: queued and not saved.
        doomed = kids._start(
            Child(
                ["run", "pollers"],
                cfg,
                tmp_path,
                label="pollers",
                failpoints="poller.before_commit=kill@3",
            )
        )
        assert await doomed.wait_exit(60) == -signal.SIGKILL
        cursor = await fetch(db_url, "SELECT pages, records FROM source_cursor")
        assert [(r["pages"], r["records"]) for r in cursor] == [(2, 200)]
        assert len(await queued(db_url)) == 200  # the third page left nothing behind

        kids._start(Child(["run", "pollers"], cfg, tmp_path, label="pollers-again"))
        kids.dispatcher(cfg)
        kids._start(Child(["run", "ingest"], cfg, tmp_path, label="ingest"))
        want = {(r["sku"], r["location"]): r["on_hand"] for r in await erp.rows()}

        async def applied() -> bool:
            return await books(db_url) == want

        await wait_until(applied, timeout=120, what="every ERP row in our books", children=kids)
        got = await queued(db_url)
        assert len(got) == len(set(got)) == 2_000  # each row queued once: none skipped
        entries = await fetch(
            db_url,
            "SELECT count(*) AS n FROM inventory_ledger WHERE entry_type = 'ADJUSTMENT'",
        )
        assert entries[0]["n"] == sum(1 for v in want.values() if v)  # each applied once

        # Changes in the ERP arrive within seconds, and only they are read.
        changed = await erp.mutate(25, seed=4)
        want = {(r["sku"], r["location"]): r["on_hand"] for r in await erp.rows()}
        await wait_until(applied, timeout=60, what="the ERP's changes", children=kids)
        later = (await queued(db_url))[2_000:]
        assert sorted(s for s, _, _ in later) == sorted(changed)


# -- no unit vanishes --------------------------------------------------------------------

SECRET = "whsec-oversold-0123456789"
HOOK = {"id": "hook", "type": "webhook", "secret_env": "HOOK_SECRET", "auto_create_skus": True}


class Up:
    """``stockkeeper up`` with its own ports, and what a client of it does."""

    def __init__(self, children: Children, db_url: str, broker_prefix: str) -> None:
        self.port = free_port()
        cfg = base_config(
            db_url,
            api={"inventory_port": self.port, "admin_port": free_port()},
            broker={"prefix": broker_prefix, "poll_ms": 50},
            connectors=[HOOK],
        )
        self.child = Child(
            ["up"], cfg, children.workdir, label="up", extra_env={"HOOK_SECRET": SECRET}
        )
        children.all.append(self.child)
        self.child.start()
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.db_url = db_url

    async def ready(self) -> None:
        async def answers() -> bool:
            try:
                return (await self.http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(answers, timeout=60, what="stockkeeper up ready")

    async def sell(self, event_id: str, sku: str, delta: int) -> None:
        body = orjson.dumps(
            {
                "event_id": event_id,
                "sales": [{"transaction_id": event_id, "sku": sku, "delta": delta}],
            }
        )
        headers = {
            **generic_headers(SECRET.encode(), body, int(time.time())),
            "Content-Type": "application/json",
        }
        r = await self.http.post("/webhooks/hook", content=body, headers=headers)
        assert r.status_code == 202, r.text

    async def sold(self, transaction_id: str) -> None:
        """Wait until the ingest worker booked the sale."""

        async def booked() -> bool:
            rows = await fetch(
                self.db_url,
                "SELECT 1 FROM inventory_ledger WHERE entry_type = 'SALE' AND reference_id = $1",
                transaction_id,
            )
            return bool(rows)

        await wait_until(booked, timeout=60, what=f"sale {transaction_id} booked")

    async def ledger(self, sku: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"/inventory/{sku}/ledger", headers=auth(ADMIN_TOKEN))
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()["entries"]
        return entries

    async def oversell(self) -> float:
        """stockkeeper_oversell_total{source="hook"}, as the inventory-api exports it."""
        text = (await self.http.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "stockkeeper_oversell_total" and sample.labels == {
                    "source": "hook"
                }:
                    return float(sample.value)
        return 0.0


async def shortfall_events(db_url: str, sku: str) -> list[dict[str, Any]]:
    rows = await fetch(
        db_url,
        "SELECT payload::text AS p FROM domain_event "
        "WHERE event_type = 'inventory.shortfall' AND sku = $1 ORDER BY id",
        sku,
    )
    return [orjson.loads(r["p"]) for r in rows]


def audit_is_clean(up: Up) -> None:
    cfg = up.child.config_path
    done = run_cli("audit", "--config", str(cfg), cwd=cfg.parent, env=clean_env(HOOK_SECRET=SECRET))
    assert done.returncode == 0, done.stdout + done.stderr


async def test_a_sale_beyond_what_is_on_hand_is_booked_whole_as_oversold_and_shortfall(
    db_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    with Children(tmp_path) as children:
        up = Up(children, db_url, broker_prefix)
        async with up.http:
            await up.ready()
            await receive(up.http, "WIDGET", 1)
            await up.sell("sale-1", "WIDGET", -3)
            await up.sold("sale-1")

            lv = await stock_of(up.http, "WIDGET")
            assert (lv["on_hand"], lv["oversold"], lv["available"], lv["shortfall"]) == (
                0,
                2,
                0,
                2,
            )
            sales = [e for e in await up.ledger("WIDGET") if e["type"] == "SALE"]
            # One entry: 1 unit out of on_hand, 2 owed; all 3 sold units are booked.
            assert [(e["on_hand"], e["oversold"]) for e in sales] == [(-1, 2)]
            (event,) = await shortfall_events(db_url, "WIDGET")
            assert (event["shortfall"], event["oversold"]) == (2, 2)
            assert await up.oversell() == 2
            audit_is_clean(up)


async def test_a_sale_of_a_sku_made_by_auto_create_skus_is_booked_the_same_way(
    db_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    with Children(tmp_path) as children:
        up = Up(children, db_url, broker_prefix)
        async with up.http:
            await up.ready()
            await up.sell("sale-new-1", "NEVER-SEEN", -3)
            await up.sold("sale-new-1")

            lv = await stock_of(up.http, "NEVER-SEEN")
            assert (lv["on_hand"], lv["oversold"], lv["shortfall"]) == (0, 3, 3)
            assert [b["location"] for b in lv["batches"]] == ["default"]
            sales = [e for e in await up.ledger("NEVER-SEEN") if e["type"] == "SALE"]
            assert [(e["on_hand"], e["oversold"]) for e in sales] == [(0, 3)]
            (event,) = await shortfall_events(db_url, "NEVER-SEEN")
            assert event["shortfall"] == 3
            assert await up.oversell() == 3
            dead = await fetch(db_url, "SELECT count(*) AS n FROM dead_letter")
            assert dead[0]["n"] == 0
            audit_is_clean(up)
