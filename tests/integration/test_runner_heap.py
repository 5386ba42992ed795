"""The runner leaves what a process built to start out of later garbage collections
(D-402): the full passes that walked it stopped the event loop for about 120 ms."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from stockkeeper.bootstrap import build
from stockkeeper.config import Settings
from stockkeeper.workers.runner import serve
from tests.support import free_port


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's own objects go back to being collected


async def test_a_served_process_freezes_its_startup_heap(
    config: dict[str, Any], unfrozen: None
) -> None:
    port = free_port()
    cfg = {**config, "api": {**config["api"], "inventory_port": port}}
    container = await build(Settings.model_validate(cfg))
    assert gc.get_freeze_count() == 0
    served = asyncio.create_task(serve(container, ["inventory-api"]))
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):  # up to 30 s for the server to listen
                if served.done():
                    served.result()  # it failed: say why
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("inventory-api never answered /readyz")
        # The modules, the app with its routes and models, the container: all of it.
        assert gc.get_freeze_count() > 50_000, gc.get_freeze_count()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the runner's own stop, as in production
        await asyncio.wait_for(served, 30)
        await container.close()


def test_a_worker_whose_metrics_port_is_taken_stops_naming_the_key(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """Two workers on one host with the same monitoring.metrics_port: the second stops
    at start with a message naming the key, not a traceback (ARCHITECTURE section 7)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = {**config, "monitoring": {**config.get("monitoring", {}), "metrics_port": port}}
        path = tmp_path / "stockkeeper.yaml"
        path.write_text(yaml.safe_dump(cfg))
        done = subprocess.run(
            [sys.executable, "-m", "stockkeeper", "run", "expiry", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    assert done.returncode != 0
    assert f"monitoring.metrics_port {port} cannot be opened" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "never awaited" not in done.stderr, done.stderr
