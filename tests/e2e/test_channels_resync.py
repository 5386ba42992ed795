"""``stockkeeper channels resync CHANNEL [--sku ...]`` as an operator runs it, against the
sandbox Shopify: every SKU (or the ones named) pushed through the claim path, a progress
line per --every SKUs and a summary, and the figure the channel's rule gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stockkeeper.bootstrap import Container
from stockkeeper.services.stock import Receipt
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from tests.e2e.helpers import run_cli


def write(tmp_path: Path, config: dict[str, Any], server: SandboxServer) -> Path:
    shop = {
        "id": "shop",
        "type": "shopify",
        "url": graphql_url(server.url),
        "location_id": "gid://shopify/Location/1",
        "rate_limit_rps": 1000,
        "batch_size": 2,
        "rules": {"buffer": 1},
    }
    path = tmp_path / "resync.yaml"
    path.write_text(yaml.safe_dump({**config, "connectors": [shop]}))
    return path


async def test_resync_pushes_every_sku_with_progress_then_only_the_named_ones(
    container: Container,
    config: dict[str, Any],
    shopify_channel: tuple[ShopifyState, SandboxServer],
    tmp_path: Path,
) -> None:
    state, server = shopify_channel
    for i in range(5):
        await container.stock.receive(Receipt(f"SKU-{i}", 10 + i, f"r-{i}"))
    path = write(tmp_path, config, server)

    result = run_cli(
        "channels", "resync", "shop", "--every", "2", "--config", str(path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    # A new channel: every SKU pushed, less the buffer of 1.
    assert state.levels() == {f"SKU-{i}": 9 + i for i in range(5)}
    lines = [line for line in result.stdout.splitlines() if line.startswith("shop: ")]
    assert len(lines) >= 3, result.stdout  # progress after 2 and 4 SKUs, then the summary
    assert lines[-1].startswith("shop: 5/5 SKUs (100.0%)"), lines
    assert "5 pushed" in lines[-1]

    # Somebody changed SKU-1 on Shopify: resync it alone; nothing else is sent.
    state.set_level("SKU-1", 0)
    before = {f"SKU-{i}": len(state.pushed(f"SKU-{i}")) for i in range(5)}
    again = run_cli(
        "channels", "resync", "shop", "--sku", "SKU-1", "--config", str(path), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert state.level("SKU-1") == 10
    assert again.stdout.splitlines()[-1].startswith("shop: 1/1 SKUs (100.0%)"), again.stdout
    after = {f"SKU-{i}": len(state.pushed(f"SKU-{i}")) for i in range(5)}
    assert {s for s in after if after[s] != before[s]} == {"SKU-1"}


def test_resync_of_an_unknown_channel_exits_2_naming_it(
    config: dict[str, Any], shopify_channel: tuple[ShopifyState, SandboxServer], tmp_path: Path
) -> None:
    _state, server = shopify_channel
    path = write(tmp_path, config, server)
    result = run_cli("channels", "resync", "nope", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "no channel named nope" in result.stderr
