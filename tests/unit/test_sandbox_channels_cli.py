"""`stockkeeper sandbox channels` prints connectors a user can paste as they are."""

from __future__ import annotations

import yaml

from stockkeeper.cli import _channels_snippet
from stockkeeper.config import ChannelConfig, Settings


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
