"""Webhook presets: how a delivery is authenticated, and how its body becomes records.

A preset is one class with ``verify`` (on the raw body, before anything is parsed) and
``parse``; ``PRESETS`` is the registry the webhook endpoint looks presets up in. Adding a
sender's format means one class here and one registry entry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockkeeper.config import WebhookConnectorConfig
from stockkeeper.connectors.records import (
    ID,
    LevelRecord,
    Refused,
    SaleRecord,
    parse_levels,
    parse_sales,
)
from stockkeeper.connectors.signatures import (
    GENERIC_SIGNATURE_HEADER,
    GENERIC_TIMESTAMP_HEADER,
    SHOPIFY_SIGNATURE_HEADER,
    SHOPIFY_TRIGGERED_AT_HEADER,
    check_shopify_triggered_at,
    verify_generic,
    verify_shopify,
)

# A Shopify orders/cancelled line is booked as the return of its orders/create line's
# transaction id with this suffix; ingest knows a cancel of nothing by it (D-489).
SHOPIFY_CANCEL = ":cancel"


class Unparseable(ValueError):
    """The body is not what the preset's format says (422)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one delivery carries: its id (for de-duplication) and its records."""

    event_id: str
    digest: bytes  # what it carries, to tell the same delivery again from another body
    levels: list[LevelRecord] = field(default_factory=list)
    sales: list[SaleRecord] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    ignored: str | None = None  # a topic we do not act on, acknowledged anyway


class Preset(Protocol):
    name: ClassVar[str]

    def verify(
        self, cfg: WebhookConnectorConfig, secret: bytes, headers: Mapping[str, str], body: bytes
    ) -> None: ...

    def parse(
        self, cfg: WebhookConnectorConfig, headers: Mapping[str, str], body: bytes
    ) -> Delivery: ...


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unparseable(f"the body is not JSON: {exc}") from None


def _digest(doc: Any, *context: str) -> bytes:
    """SHA-256 of a parsed body in one canonical form (keys sorted, no whitespace), with
    what else gives it its meaning (Shopify's topic): a sender that writes the same
    delivery again with other whitespace or key order sends the same delivery (D-441)."""
    mac = hashlib.sha256()
    for part in context:
        mac.update(part.encode() + b"\0")
    mac.update(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    return mac.digest()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"


# -- generic --------------------------------------------------------------------------


class _GenericBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: Annotated[str, Field(min_length=1, max_length=200), ID]
    levels: list[Any] = Field(default_factory=list, max_length=10_000)
    sales: list[Any] = Field(default_factory=list, max_length=10_000)


class GenericPreset:
    """``{"event_id", "levels": [LevelRecord...], "sales": [SaleRecord without source]}``,
    signed with ``X-Signature`` over ``"<X-Timestamp>.<body>"``. A sale's source is the
    connector's id, whatever ``source`` the body gives."""

    name: ClassVar[str] = "generic"

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock

    def verify(
        self, cfg: WebhookConnectorConfig, secret: bytes, headers: Mapping[str, str], body: bytes
    ) -> None:
        verify_generic(
            secret,
            body,
            headers.get(GENERIC_SIGNATURE_HEADER),
            headers.get(GENERIC_TIMESTAMP_HEADER),
            now=self.clock(),
            tolerance_s=cfg.tolerance_s,
        )

    def parse(
        self, cfg: WebhookConnectorConfig, headers: Mapping[str, str], body: bytes
    ) -> Delivery:
        raw = _json(body)
        try:
            doc = _GenericBody.model_validate(raw)
        except ValidationError as exc:
            raise Unparseable(_first_error(exc)) from None
        levels, bad_levels = parse_levels(doc.levels)
        # A sale's source is this connector, whatever the body says: it is what a sale
        # is applied once per (with its transaction_id) and what echo suppression
        # matches, so a sender must not pass for another connector (a channel's own,
        # say). The sale itself is still booked: a sale is never dropped (D-417).
        raw_sales = [{**s, "source": cfg.id} if isinstance(s, dict) else s for s in doc.sales]
        sales, bad_sales = parse_sales(raw_sales)
        return Delivery(doc.event_id, _digest(raw), levels, sales, bad_levels + bad_sales)


# -- Shopify ----------------------------------------------------------------------------


# Strict, as every record (connectors/records.py): Shopify writes integers, so true, "3"
# or 3.0 for a quantity or an id is not one (lax parsing would book true as 1 unit).
class _LineItem(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    id: int
    sku: str | None = None
    quantity: int


class _Order(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    id: int
    line_items: list[_LineItem] = Field(max_length=10_000)


class ShopifyPreset:
    """Shopify's order webhooks as sales: ``orders/create`` sells every line item
    (transaction ``<order id>:<line item id>``), ``orders/cancelled`` puts them back.
    Other topics are acknowledged and ignored. Signed with ``X-Shopify-Hmac-Sha256``;
    ``X-Shopify-Webhook-Id`` identifies the delivery; one whose ``X-Shopify-Triggered-At``
    lies outside the connector's ``tolerance_s`` is refused as a replay."""

    name: ClassVar[str] = "shopify"
    TOPICS: ClassVar[dict[str, int]] = {"orders/create": -1, "orders/cancelled": 1}

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock

    def verify(
        self, cfg: WebhookConnectorConfig, secret: bytes, headers: Mapping[str, str], body: bytes
    ) -> None:
        verify_shopify(secret, body, headers.get(SHOPIFY_SIGNATURE_HEADER))
        check_shopify_triggered_at(
            headers.get(SHOPIFY_TRIGGERED_AT_HEADER), now=self.clock(), tolerance_s=cfg.tolerance_s
        )

    def parse(
        self, cfg: WebhookConnectorConfig, headers: Mapping[str, str], body: bytes
    ) -> Delivery:
        event_id = headers.get("X-Shopify-Webhook-Id", "")
        if not 1 <= len(event_id) <= 200:
            raise Unparseable("X-Shopify-Webhook-Id: required, 1 to 200 characters")
        topic = headers.get("X-Shopify-Topic", "")
        sign = self.TOPICS.get(topic)
        doc = _json(body)
        digest = _digest(doc, topic)
        if sign is None:
            return Delivery(event_id, digest, ignored=topic or "(no topic)")
        try:
            order = _Order.model_validate(doc)
        except ValidationError as exc:
            raise Unparseable(_first_error(exc)) from None
        suffix = "" if sign < 0 else SHOPIFY_CANCEL
        raw: list[dict[str, Any]] = []
        odd: list[Refused] = []
        for li in order.line_items:
            sale = {
                "transaction_id": f"{order.id}:{li.id}{suffix}",
                "sku": li.sku,
                "delta": sign * li.quantity,
                "source": cfg.id,
            }
            if li.quantity < 1:  # a negative quantity must not turn a sale into a return
                odd.append(Refused(sale, f"line item {li.id}: quantity must be at least 1"))
            else:
                raw.append(sale)
        sales, refused = parse_sales(raw)
        return Delivery(event_id, digest, sales=sales, refused=odd + refused)


PRESETS: dict[str, Preset] = {"generic": GenericPreset(), "shopify": ShopifyPreset()}
