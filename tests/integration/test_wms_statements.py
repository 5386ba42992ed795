"""A WMS full-sync page runs a constant number of statements whatever its size (issue
15 point 3): the batches it creates, the differences, the ledger, the snapshots and the
events are each written set-based, and nothing is asked per batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.wms import Counted
from stockkeeper.services.audit import audit
from stockkeeper.services.wms import SyncJob
from tests.integration.statements import statements

WMS = {"id": "wms-main", "type": "wms", "url": "http://127.0.0.1:1"}


@pytest.fixture(params=[0, 500], ids=["per-sku-events", "bulk-levels"])
async def c(config: dict[str, Any], clock: Any, request: Any) -> AsyncIterator[Container]:
    cfg = {**config, "connectors": [WMS], "bulk": {"levels_per_message": request.param}}
    container = await build(Settings.model_validate(cfg), clock=clock)
    yield container
    await container.close()


async def full_job(c: Container) -> SyncJob:
    await c.wms.request_sync(reason="count day", requested_by="tests")
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    return job


def page(prefix: str, n: int, on_hand: int) -> list[Counted]:
    """``n`` batches over n/4 SKUs (as the sandbox WMS spreads them), half with a lot."""
    return [
        Counted(
            f"{prefix}-{i // 4:05d}",
            f"WH-{i % 2}",
            f"LOT-{i % 4}" if i % 4 >= 2 else None,
            None,
            on_hand + i % 7,
            i % 3,
        )
        for i in range(n)
    ]


async def run_page(c: Container, job: SyncJob, rows: list[Counted]) -> tuple[int, int]:
    async with statements(c.pool) as seen:
        result = await c.wms.apply_page(job, rows, cursor=None)
    return len(seen), result.adjustments


async def test_a_full_sync_page_runs_the_same_statements_for_10_and_5000_batches(
    c: Container,
) -> None:
    job = await full_job(c)
    # Into an empty database: every batch new, created and adjusted from zero.
    small_new, moved = await run_page(c, job, page("S", 10, 5))
    assert moved == 10
    large_new, moved = await run_page(c, job, page("L", 5000, 5))
    assert moved == 5000
    # The same batches counted again, every figure different: pure reconciliation.
    small_again, moved = await run_page(c, job, page("S", 10, 9))
    assert moved == 10
    large_again, moved = await run_page(c, job, page("L", 5000, 9))
    assert moved == 5000
    assert small_new == large_new
    assert small_again == large_again
    assert large_new <= 13, large_new  # BEGIN and COMMIT included
    async with c.pool.acquire() as conn:
        report = await audit(conn)
        ledger = await conn.fetchval(
            "SELECT count(*) FROM inventory_ledger WHERE entry_type = 'ADJUSTMENT'"
        )
        snapshots = await conn.fetchval("SELECT count(*) FROM wms_inventory_snapshot")
    assert report.clean, report.summary()
    assert (ledger, snapshots) == (2 * 5010, 5010)
