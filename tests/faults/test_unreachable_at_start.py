"""A process that cannot reach its database or its broker at start exits with status 3
and one line naming the setting and the address (no traceback, no password), for its
supervisor to start it again (D-435). Once running, the same outages are waited out
(test_worker_database_outage.py, test_rabbit_node_outage.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.messaging_helpers import Child
from tests.support import base_config, free_port

UNREACHABLE_AT_START = 3


async def exit_of(args: list[str], cfg: dict[str, object], workdir: Path) -> tuple[int, str]:
    child = Child(args, cfg, workdir, label=args[-1]).start()
    try:
        rc = await child.wait_exit(60)
    finally:
        child.stop()
    return rc, child.log_path.read_text(errors="replace")


@pytest.mark.parametrize("service", ["inventory-api", "dispatcher", "expiry"])
async def test_no_database_at_start_is_exit_3_naming_database_url(
    service: str, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    cfg = base_config(f"postgresql://stock:s3cret-pw@127.0.0.1:{port}/stock")
    rc, out = await exit_of(["run", service], cfg, tmp_path)
    assert rc == UNREACHABLE_AT_START, out
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port} (database.url) at start" in out
    assert "Traceback" not in out
    assert "s3cret-pw" not in out


@pytest.mark.parametrize(
    "args",
    [
        ["run", "dispatcher"],
        ["run", "ingest"],
        ["consume", "wms.outbound", "tests.e2e.effects:record"],
    ],
)
async def test_no_broker_at_start_is_exit_3_naming_broker_url(
    args: list[str], db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    cfg = base_config(db_url, broker={"url": f"amqp://guest:s3cret-pw@127.0.0.1:{port}/"})
    cfg["database"] = {"url": db_url, "pool_size": 2}
    cfg["logging"] = {"level": "info"}  # the default a user runs with
    rc, out = await exit_of(args, cfg, tmp_path)
    assert rc == UNREACHABLE_AT_START, out
    assert f"cannot reach RabbitMQ at 127.0.0.1:{port} (broker.url) at start" in out
    assert "Traceback" not in out
    assert "s3cret-pw" not in out
    # One line says it: not aio-pika's and aiormq's too ("error when creating
    # transport", "Reconnecting after 1 seconds" as the process exits; D-482).
    assert "aiormq" not in out, out
    assert "aio_pika" not in out, out
