"""The Shopify adapter's calls: look SKUs up, read levels, set quantities, each paced by
the cost bucket (see :mod:`stockkeeper.connectors.shopify`, whose
:class:`~stockkeeper.connectors.shopify.ShopifyChannel` builds on :class:`ShopifyCalls`).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from stockkeeper.config import ShopifyChannelConfig
from stockkeeper.connectors.http import (
    ConnectorRejected,
    ConnectorUnavailable,
    HttpCaller,
    OnCall,
)
from stockkeeper.connectors.shopify_bucket import CostPacer
from stockkeeper.connectors.shopify_wire import (
    AVAILABLE,
    ITEMS_BY_SKU,
    LEVEL_ALIAS,
    MAX_PAGE,
    SET_AVAILABLE,
    Answer,
    GraphQLError,
    ItemsData,
    LevelsData,
    NodesData,
    SetData,
    UserError,
    available_at,
    estimate,
    fitting,
    parser,
)
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics

ACCESS_TOKEN_HEADER = "X-Shopify-Access-Token"  # noqa: S105 - a header name
QUANTITY_NAME = "available"
# Pages of one SKU lookup (more than one only when SKUs match several items).
MAX_LOOKUP_PAGES = 10
# Tries of one call that Shopify answers THROTTLED.
THROTTLED_TRIES = 5
# The longest a call waits for its turn in the cost bucket (behind the adapter's other
# calls) before the push is given back as unavailable.
MAX_PACE_WAIT_S = 60.0
# Top-level GraphQL error codes worth trying again later (others: the call is refused).
SERVER_TROUBLE = {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"}

log = get_logger("stockkeeper.connectors.shopify")
D = TypeVar("D", bound=BaseModel)
_GID = re.compile(r"^gid://shopify/InventoryItem/[0-9]+$")


class TooCostly(ConnectorUnavailable):
    """A call costs more than Shopify's whole bucket: it can only pass split up."""


def _search_term(sku: str) -> str:
    escaped = sku.replace("\\", "\\\\").replace('"', '\\"')
    return f'sku:"{escaped}"'


def _chunks(values: Sequence[str], size: int) -> list[Sequence[str]]:
    size = max(1, size)
    return [values[i : i + size] for i in range(0, len(values), size)]


class ShopifyCalls:
    """The three documents of the Shopify channel (and the read of several locations),
    paced by one cost bucket per adapter. Close with :meth:`aclose`."""

    def __init__(
        self,
        cfg: ShopifyChannelConfig,
        *,
        token: str | None = None,
        metrics: Metrics | None = None,
        on_call: OnCall | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        headers = {ACCESS_TOKEN_HEADER: token} if token else {}
        # Pushes run under a lease: a call never sleeps past it (HttpCaller, D-416).
        self.http = HttpCaller(
            cfg,
            metrics=metrics,
            on_call=on_call,
            transport=transport,
            headers=headers,
            bounded_waits=True,
        )
        self.pacer = CostPacer(cfg.id, MAX_PACE_WAIT_S, metrics)
        # Requested cost Shopify reported per (operation, items), to pace the next one.
        self._costs: dict[tuple[str, int], float] = {}

    @property
    def id(self) -> str:
        return self.cfg.id

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _in_chunks(
        self,
        values: list[str],
        base: float,
        per_item: float,
        call: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        """``call`` on chunks of ``values`` each costing no more than Shopify's whole
        bucket (a chunk found to cost more is split and sent again)."""
        size = fitting(len(values), base, per_item, self.pacer.bucket.maximum)
        todo = _chunks(values, min(size, MAX_PAGE))
        while todo:
            chunk = list(todo.pop(0))
            try:
                await call(chunk)
            except TooCostly:
                if len(chunk) == 1:
                    raise
                size = fitting(len(chunk), base, per_item, self.pacer.bucket.maximum)
                todo[:0] = _chunks(chunk, min(size, len(chunk) // 2))

    async def _lookup(self, skus: Sequence[str]) -> tuple[dict[str, str], dict[str, int]]:
        """Inventory item gid per SKU, and how many items share each SKU found twice."""
        found: dict[str, set[str]] = {}

        async def lookup(chunk: list[str]) -> None:
            wanted = set(chunk)
            variables: dict[str, Any] = {
                "first": len(chunk),
                "after": None,
                "query": " OR ".join(_search_term(s) for s in chunk),
            }
            for _page in range(MAX_LOOKUP_PAGES):
                data = await self._graphql(
                    "lookup_items", ITEMS_BY_SKU, variables, len(chunk), ItemsData
                )
                for node in data.inventoryItems.nodes:
                    # Search terms may match loosely; only the exact SKU counts.
                    if node.sku in wanted and _GID.match(node.id):
                        found.setdefault(node.sku, set()).add(node.id)
                page = data.inventoryItems.pageInfo
                if not page.hasNextPage or not page.endCursor:
                    return
                variables["after"] = page.endCursor
            missing = sorted(wanted - found.keys())
            if missing:
                # The search matched more items than MAX_LOOKUP_PAGES pages hold: a SKU
                # not met yet may still be on a later page, so it is not "not listed"
                # (which would hold its pushes back for an hour); the push is retried,
                # then dead-lettered with this reason (D-486).
                raise ConnectorUnavailable(
                    self.id,
                    "lookup_items",
                    "invalid_response",
                    f"the SKU search still had more pages after {MAX_LOOKUP_PAGES}; "
                    f"not found yet: {', '.join(missing[:5])}",
                )

        await self._in_chunks(list(skus), 2, 1, lookup)
        doubles = {sku: len(ids) for sku, ids in found.items() if len(ids) > 1}
        return {sku: min(ids) for sku, ids in found.items() if sku not in doubles}, doubles

    async def _available(self, gids: Sequence[str], location: str) -> dict[str, int | None]:
        """The available quantity per inventory item gid at ``location``."""
        shown: dict[str, int | None] = {}

        async def read(chunk: list[str]) -> None:
            variables = {"ids": chunk, "locationId": location}
            data = await self._graphql(
                "read_available", AVAILABLE, variables, len(chunk), NodesData
            )
            if len(data.nodes) != len(chunk):
                raise ConnectorUnavailable(
                    self.id, "read_available", "invalid_response", "nodes() did not answer every id"
                )
            for gid, node in zip(chunk, data.nodes, strict=True):
                level = node.inventoryLevel if node is not None else None
                quantities = {q.name: q.quantity for q in level.quantities} if level else {}
                shown[gid] = quantities.get(QUANTITY_NAME) if level else None

        await self._in_chunks(list(dict.fromkeys(gids)), 1, 3, read)
        return shown

    async def _levels(
        self, gids: Sequence[str], locations: Sequence[str]
    ) -> dict[str, dict[str, int | None] | None]:
        """Per inventory item gid, the available quantity at each of ``locations`` (None:
        not stocked there); None for a gid that names no item. One aliased
        ``inventoryLevel(locationId:)`` per location in one ``nodes()`` read."""
        document = available_at(len(locations))
        per_item = 1.0 + 2.0 * len(locations)
        shown: dict[str, dict[str, int | None] | None] = {}

        async def read(chunk: list[str]) -> None:
            variables: dict[str, Any] = {"ids": chunk}
            variables.update({f"{LEVEL_ALIAS}{i}": loc for i, loc in enumerate(locations)})
            data = await self._graphql(
                "read_levels",
                document,
                variables,
                len(chunk),
                LevelsData,
                cost_hint=estimate("read", len(chunk), len(locations)),
            )
            if len(data.nodes) != len(chunk):
                raise ConnectorUnavailable(
                    self.id, "read_levels", "invalid_response", "nodes() did not answer every id"
                )
            for gid, node in zip(chunk, data.nodes, strict=True):
                if node is None or node.id is None:
                    shown[gid] = None
                    continue
                at: dict[str, int | None] = {}
                for i, loc in enumerate(locations):
                    level = node.level(i)
                    found = {q.name: q.quantity for q in level.quantities} if level else {}
                    at[loc] = found.get(QUANTITY_NAME) if level else None
                shown[gid] = at

        await self._in_chunks(list(dict.fromkeys(gids)), 1, per_item, read)
        return shown

    async def _set(
        self,
        quantities: list[dict[str, Any]],
        reference: str,
        again: Callable[[], Awaitable[None]],
    ) -> list[UserError]:
        """One inventorySetQuantities of every quantity entry; its userErrors."""
        variables: dict[str, Any] = {
            "input": {
                "name": QUANTITY_NAME,
                "reason": self.cfg.reason,
                "referenceDocumentUri": reference,
                "quantities": quantities,
            },
        }
        data = await self._graphql(
            "set_available",
            SET_AVAILABLE,
            variables,
            len(quantities),
            SetData,
            fresh_key=True,
            again=again,
        )
        return data.inventorySetQuantities.userErrors

    async def _graphql(
        self,
        operation: str,
        document: str,
        variables: dict[str, Any],
        items: int,
        model: type[D],
        *,
        fresh_key: bool = False,
        again: Callable[[], Awaitable[None]] | None = None,
        cost_hint: float | None = None,
    ) -> D:
        """One GraphQL call, paced by the cost bucket, tried again while THROTTLED
        (after ``again``, which may raise to stop it, when one is given)."""
        parse = parser(model)
        cost = self._costs.get((operation, items)) or cost_hint or estimate(operation, items)
        for attempt in range(1, THROTTLED_TRIES + 1):
            if attempt > 1 and again is not None:
                await again()
            if fresh_key:
                # A throttled mutation was not run; a new attempt gets a new key. The
                # HttpCaller's own retries (5xx, timeouts) resend the same key.
                variables["idempotencyKey"] = str(uuid.uuid4())
            ticket = await self.pacer.admit(operation, cost)
            answer: Answer[D] | None = None
            try:
                answer = await self.http.call(
                    operation,
                    "POST",
                    self.cfg.url,
                    parse,
                    json={"query": document, "variables": variables},
                )
            finally:
                self.pacer.settle(ticket, answer.cost if answer is not None else None)
            assert answer is not None
            if answer.cost is not None and answer.cost.requestedQueryCost is not None:
                cost = self._costs[(operation, items)] = answer.cost.requestedQueryCost
            if answer.throttled:
                status = answer.cost.throttleStatus if answer.cost else None
                if status is not None and cost > status.maximumAvailable:
                    raise TooCostly(
                        self.id,
                        operation,
                        "rate_limited",
                        f"costs {cost:.0f} points, more than Shopify's whole bucket "
                        f"({status.maximumAvailable:.0f})",
                    )
                wait = self.pacer.wait_for(cost)
                if wait <= 0:
                    # No throttleStatus to wait for (or none that explains the refusal):
                    # back off as HttpCaller would, rather than ask again at once.
                    wait = self.http.backoff.delay(attempt)
                    if attempt < THROTTLED_TRIES:
                        await asyncio.sleep(wait)
                log.warning(
                    "shopify.throttled",
                    connector=self.id,
                    operation=operation,
                    attempt=attempt,
                    wait_s=round(wait, 3),
                )
                if attempt == THROTTLED_TRIES:
                    raise ConnectorUnavailable(
                        self.id,
                        operation,
                        "rate_limited",
                        f"THROTTLED {attempt} times in a row",
                        retry_after=wait,
                        attempts=attempt,
                    )
                continue
            if answer.errors:
                raise self._errors(operation, answer.errors)
            assert answer.data is not None  # no errors: the parser validated the data
            return answer.data
        raise AssertionError("the loop returns or raises")

    def _errors(self, operation: str, errors: list[GraphQLError]) -> Exception:
        text = "; ".join(f"{e.code or 'ERROR'}: {e.message}" for e in errors)[:500]
        if any(e.code in SERVER_TROUBLE for e in errors):
            return ConnectorUnavailable(self.id, operation, "server_error", text)
        return ConnectorRejected(self.id, operation, 200, f"errors: {text}")
