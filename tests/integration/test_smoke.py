"""The container builds against a real database and a receipt reaches the ledger."""

from __future__ import annotations

from stockkeeper.bootstrap import Container
from stockkeeper.services.audit import audit
from stockkeeper.services.stock import Receipt


async def test_receipt_then_audit_clean(container: Container) -> None:
    done = await container.stock.receive(Receipt("SKU-1", 7, "rcpt-1"))
    assert done.created
    assert done.result.level.available == 7
    again = await container.stock.receive(Receipt("SKU-1", 7, "rcpt-1"))
    assert not again.created
    level = await container.stock.get("SKU-1")
    assert level.on_hand == 7
    async with container.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.render()
