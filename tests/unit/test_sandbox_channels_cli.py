"""`stockkeeper sandbox channels` prints connectors a user can paste as they are."""

from __future__ import annotations

import yaml

from stockkeeper.cli_sandbox import (
    _channels_snippet,
    _erp_snippet,
    _marketplace_snippet,
    _wms_snippet,
)
from stockkeeper.config import (
    ChannelConfig,
    ErpConnectorConfig,
    MarketplaceConnectorConfig,
    Settings,
    WmsConnectorConfig,
)


def test_the_printed_snippet_is_a_valid_connectors_section() -> None:
    text = _channels_snippet("http://127.0.0.1", (9500, 9501, 9502), "A1SANDBOX", "SECRET", "TOK")
    channels = Settings.model_validate(yaml.safe_load(text)).connectors_of(ChannelConfig)
    assert [(c.type, c.url) for c in channels] == [
        ("shopify", "http://127.0.0.1:9500/admin/api/2026-04/graphql.json"),
        ("amazon", "http://127.0.0.1:9501"),
        ("outbound_webhook", "http://127.0.0.1:9502/stockkeeper/levels"),
    ]
    assert [c.token_env for c in channels] == ["TOK", "TOK", None]


def test_without_a_token_the_snippet_names_none() -> None:
    text = _channels_snippet("http://[::1]", (1, 2, 3), "A1SANDBOX", "SECRET", None)
    channels = Settings.model_validate(yaml.safe_load(text)).connectors_of(ChannelConfig)
    assert all(c.token_env is None for c in channels)


def test_the_wms_marketplace_and_erp_snippets_are_valid_connectors_sections() -> None:
    wms = Settings.model_validate(yaml.safe_load(_wms_snippet("http://127.0.0.1:9300", "TOK")))
    (w,) = wms.connectors_of(WmsConnectorConfig)
    assert (w.url, w.token_env) == ("http://127.0.0.1:9300", "TOK")

    text = _marketplace_snippet("http://127.0.0.1:9400", None)
    (m,) = Settings.model_validate(yaml.safe_load(text)).connectors_of(MarketplaceConnectorConfig)
    assert (m.url, m.adapter, m.token_env) == ("http://127.0.0.1:9400", "generic", None)

    text = _erp_snippet("postgresql://erp_reader@/sk_erp_sandbox?host=/tmp/pg")
    (e,) = Settings.model_validate(yaml.safe_load(text)).connectors_of(ErpConnectorConfig)
    assert e.dsn == "postgresql+asyncpg://erp_reader@/sk_erp_sandbox?host=/tmp/pg"
