"""A coalesced batch is one transaction: a server killed mid-batch leaves none of it.

The server SIGKILLs itself (failpoint ``reserve.coalesced_request=kill@N``) inside a
batch's transaction, after its N-th coalesced request was applied but before that batch
commits. Every 2xx answered before must be durable, nothing of the batch in flight may
be, and the books must audit clean.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.helpers import audit, client, receive
from tests.support import WRITER_TOKEN, ServerProcess, auth, base_config

pytestmark = pytest.mark.slow

KILL_AT = 90


async def test_kill_mid_batch_leaves_no_partial_reservation(db_url: str, tmp_path: Path) -> None:
    cfg = base_config(db_url, concurrency={"coalesce_window_ms": 5, "coalesce_max_batch": 40})
    server = ServerProcess(
        cfg,
        tmp_path,
        extra_env={"STOCKKEEPER_FAILPOINTS": f"reserve.coalesced_request=kill@{KILL_AT}"},
    ).start()
    try:
        async with client(server, connections=200) as http:
            await receive(http, "CRASH-1", 1000)

            async def reserve(i: int) -> int | None:
                try:
                    r = await http.post(
                        "/inventory/reserve",
                        json={
                            "order_id": f"k-{i:03d}",
                            "lines": [{"sku": "CRASH-1", "quantity": 1}],
                        },
                        headers=auth(WRITER_TOKEN),
                    )
                except httpx.TransportError:
                    return None
                return r.status_code

            statuses = await asyncio.gather(*(reserve(i) for i in range(200)))
        assert server.proc is not None
        assert server.proc.wait(timeout=30) == -9
    finally:
        server.stop()

    answered = {f"k-{i:03d}" for i, s in enumerate(statuses) if s is not None}
    assert {s for s in statuses if s is not None} <= {201}
    assert len(answered) < 200  # the requests of the killed batch got no answer
    conn = await asyncpg.connect(db_url)
    try:
        held = {r["order_id"] for r in await conn.fetch("SELECT order_id FROM reservation")}
        without_lines = await conn.fetchval(
            "SELECT count(*) FROM reservation r WHERE NOT EXISTS "
            "(SELECT 1 FROM reservation_line l WHERE l.reservation_id = r.id)"
        )
    finally:
        await conn.close()
    assert answered <= held  # every 2xx is durable
    assert len(held) < KILL_AT  # the batch holding the KILL_AT-th request never committed
    assert without_lines == 0
    done = audit(server)
    assert done.returncode == 0, done.stdout + done.stderr
