"""What the inbound formats make of odd bodies: the webhook presets' and the generic
delta feed's parsing, after the signature (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stockkeeper.config import MarketplaceConnectorConfig, WebhookConnectorConfig
from stockkeeper.connectors.marketplace import GenericDeltas
from stockkeeper.connectors.webhook import GenericPreset, ShopifyPreset, Unparseable

HOOK = WebhookConnectorConfig.model_validate({"id": "hook", "type": "webhook", "secret_env": "S"})
SHOP = WebhookConnectorConfig.model_validate(
    {"id": "shop", "type": "webhook", "preset": "shopify", "secret_env": "S"}
)
MARKET = MarketplaceConnectorConfig.model_validate(
    {"id": "bazaar", "type": "marketplace", "url": "http://bazaar.test"}
)


def shopify_headers(topic: str = "orders/create") -> dict[str, str]:
    return {"X-Shopify-Webhook-Id": "w-1", "X-Shopify-Topic": topic}


@pytest.mark.parametrize("quantity", [True, "3", 3.0, None])
def test_a_shopify_line_item_quantity_must_be_an_integer(quantity: Any) -> None:
    body = orjson.dumps({"id": 1, "line_items": [{"id": 7, "sku": "TEE", "quantity": quantity}]})
    with pytest.raises(Unparseable, match="quantity"):
        ShopifyPreset().parse(SHOP, shopify_headers(), body)


def test_a_shopify_order_id_must_be_an_integer() -> None:
    body = orjson.dumps({"id": "1", "line_items": [{"id": 7, "sku": "TEE", "quantity": 1}]})
    with pytest.raises(Unparseable, match="id"):
        ShopifyPreset().parse(SHOP, shopify_headers(), body)


def test_a_shopify_order_is_sold_line_by_line_from_this_connector() -> None:
    body = orjson.dumps({"id": 9, "line_items": [{"id": 7, "sku": "TEE", "quantity": 2}]})
    [sale] = ShopifyPreset().parse(SHOP, shopify_headers(), body).sales
    assert (sale.transaction_id, sale.sku, sale.delta, sale.source) == ("9:7", "TEE", -2, "shop")


@pytest.mark.parametrize("body", [b"", b"\xff\xfe{}", b"null"])
def test_empty_non_utf8_or_null_bodies_do_not_parse(body: bytes) -> None:
    with pytest.raises(Unparseable):
        GenericPreset().parse(HOOK, {}, body)
    with pytest.raises(Unparseable):
        ShopifyPreset().parse(SHOP, shopify_headers(), body)


def test_a_generic_sale_comes_from_this_connector_whatever_source_it_names() -> None:
    sales = [
        {"transaction_id": "t-1", "sku": "A", "delta": -1},
        {"transaction_id": "t-2", "sku": "A", "delta": -1, "source": "hook"},
        # Naming the Shopify channel's own connector would make it an echo (not pushed
        # back to Shopify) and share that connector's transaction ids: the sale is
        # booked as this connector's, not refused (a sale is never dropped).
        {"transaction_id": "t-3", "sku": "A", "delta": -1, "source": "shopify-orders"},
    ]
    delivery = GenericPreset().parse(HOOK, {}, orjson.dumps({"event_id": "e", "sales": sales}))
    assert [(s.transaction_id, s.source) for s in delivery.sales] == [
        ("t-1", "hook"),
        ("t-2", "hook"),
        ("t-3", "hook"),
    ]
    assert delivery.refused == []


@pytest.mark.parametrize("quantity", [True, False, 0, -2, 1.5, "2", None])
def test_a_delta_feed_sale_quantity_must_be_a_positive_integer(quantity: Any) -> None:
    change = {"kind": "sale", "transaction_id": "t-1", "sku": "A", "quantity": quantity}
    page = GenericDeltas().parse(MARKET, {"changes": [change], "next": "n-1", "has_more": False})
    assert page.sales == []
    assert [r.raw for r in page.refused] == [change]


def test_a_delta_feed_sale_is_a_negative_delta_from_the_connector() -> None:
    change = {"kind": "sale", "transaction_id": "t-1", "sku": "A", "quantity": 3}
    page = GenericDeltas().parse(MARKET, {"changes": [change], "next": "n-1", "has_more": False})
    [sale] = page.sales
    assert (sale.delta, sale.source) == (-3, "bazaar")
