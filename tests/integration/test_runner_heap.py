"""The runner leaves what a process built to start out of later garbage collections
(D-402): the full passes that walked it stopped the event loop for about 120 ms."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

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
