"""Ingestion end to end: ``stockkeeper run pollers``, ``run dispatcher`` and ``run ingest``
as real processes on PostgreSQL and RabbitMQ, reading the sandbox ERP (a separate
PostgreSQL database)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stockkeeper_sandbox.erp import ErpSandbox
from tests.e2e.messaging_helpers import Child, Children, wait_until
from tests.support import base_config

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
