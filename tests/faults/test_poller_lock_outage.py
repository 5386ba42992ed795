"""The pollers' lock across a PostgreSQL restart (D-053, D-437).

One poller per connector runs at a time, by a session advisory lock; a second
``stockkeeper run pollers`` is a standby. The lock lives as long as its session, and a
restart of the database ends every session. Two real ``run pollers`` processes on a
private cluster: after the restart both still run and the connector's lock is held
again by one of them, the other standing by. (It was: the active one went on polling
with no lock at all, so nothing kept a second poller off, and the standby died with
the error of its lost session.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stockkeeper.workers.pollers import lock_key
from tests.e2e.messaging_helpers import Child, Children, wait_until
from tests.faults.servers import PrivatePostgres
from tests.support import base_config, free_port

pytestmark = pytest.mark.slow

CONNECTOR = "market"
KEY = lock_key(CONNECTOR)
OUTAGE_S = 3.0


async def lock_holders(url: str) -> list[int]:
    """The backends holding the connector's advisory lock (none while it is down)."""
    try:
        conn = await asyncpg.connect(url, server_settings={"application_name": "test"})
    except (OSError, asyncpg.PostgresError):
        return []
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = $1",
            KEY,
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


def replica(cfg: dict[str, Any], workdir: Path, label: str) -> Child:
    return Child(["run", "pollers"], cfg, workdir, label=label, extra_env={"FAULT_TOKEN": "t"})


async def test_the_pollers_lock_is_taken_again_after_a_database_restart(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    cfg = base_config(
        private_pg.url,
        database={"pool_size": 3},
        broker={"poll_ms": 200},
        logging={"level": "info"},
        connectors=[
            {
                "id": CONNECTOR,
                "type": "marketplace",
                # Nobody answers: the poll fails, the lock is what this test watches.
                "url": f"http://127.0.0.1:{free_port()}",
                "token_env": "FAULT_TOKEN",
                "interval_s": 0.5,
                "max_attempts": 1,
            }
        ],
    )
    with Children(tmp_path) as children:
        first = children._start(replica(cfg, tmp_path, "first"))
        await wait_until(
            lambda: _logged(first, "poller.started"),
            timeout=30,
            what="first polls",
            children=children,
        )
        second = children._start(replica(cfg, tmp_path, "second"))
        await wait_until(
            lambda: _logged(second, "poller.standby"), timeout=30, what="standby", children=children
        )
        assert len(await lock_holders(private_pg.url)) == 1

        await asyncio.to_thread(private_pg.stop)
        await asyncio.sleep(OUTAGE_S)  # the outage itself
        await asyncio.to_thread(private_pg.start)

        async def held_again() -> bool:
            return len(await lock_holders(private_pg.url)) == 1

        await wait_until(held_again, timeout=30, what="the lock held again", children=children)
        # Both still there a while later, one holding, and the lock never doubled.
        for _ in range(20):
            children.check_alive()
            assert len(await lock_holders(private_pg.url)) == 1
            await asyncio.sleep(0.25)
        polling = [c for c in (first, second) if c.log_path.read_text().count('"poller.started"')]
        assert polling, children.logs()


async def _logged(child: Child, event: str) -> bool:
    return child.logged(event)
