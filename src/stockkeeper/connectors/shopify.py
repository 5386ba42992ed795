"""The Shopify channel: availability at one location through the Admin GraphQL API.

Wire contract (docs/channels.md): every call is a ``POST`` of ``{"query", "variables"}``
to the configured GraphQL endpoint with ``X-Shopify-Access-Token``, through
:class:`HttpCaller` (our pace, timeouts, retries of 429/5xx). Three documents:

* ``inventoryItems(first:, after:, query: "sku:\\"A\\" OR sku:\\"B\\"")``: a SKU's inventory item
  gid, for items the caller has no ``channel_ref`` for yet (returned in the outcome so the
  caller keeps it);
* ``inventorySetQuantities`` of the ``available`` quantity, a whole batch per mutation,
  each item with ``changeFromQuantity`` (what we believe Shopify shows; an explicit null
  when we have never told it anything), under an ``@idempotent`` key so that a retried
  request is applied once (both required from API version 2026-04);
* ``nodes(ids:)`` with each item's ``inventoryLevel(locationId:)``: what Shopify shows.

The mutation is all or nothing: any ``userErrors`` and nothing was applied. Stale
``changeFromQuantity`` values are re-read and the mutation sent again (a few rounds);
items Shopify refuses for good are set aside and the rest sent again without them.

Shopify limits an app by query cost, not by requests: one
:class:`~stockkeeper.connectors.shopify_bucket.CostPacer` per adapter keeps an estimate of
the bucket and makes every call wait until it covers the call's cost. A call costing more
than the whole bucket is split. A ``THROTTLED`` answer (HTTP 200) waits for the points it
lacked and tries again, a few times, then gives up with
``ConnectorUnavailable(reason="rate_limited")``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from stockkeeper.config import ShopifyChannelConfig
from stockkeeper.connectors.channels import Fence, Push, PushOutcome
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
    MAX_PAGE,
    SET_AVAILABLE,
    Answer,
    GraphQLError,
    ItemsData,
    NodesData,
    SetData,
    UserError,
    estimate,
    fitting,
    parser,
)
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics

ACCESS_TOKEN_HEADER = "X-Shopify-Access-Token"  # noqa: S105 - a header name
QUANTITY_NAME = "available"
# Rounds of re-reading stale changeFromQuantity values before the push is given back.
STALE_ROUNDS = 3
# Pages of one SKU lookup (more than one only when SKUs match several items).
MAX_LOOKUP_PAGES = 10
# Tries of one call that Shopify answers THROTTLED.
THROTTLED_TRIES = 5
# The longest a call waits for its turn in the cost bucket (behind the adapter's other
# calls) before the push is given back as unavailable.
MAX_PACE_WAIT_S = 60.0

# userErrors codes of inventorySetQuantities, by what they mean for the item named.
STALE = "CHANGE_FROM_QUANTITY_STALE"
UNKNOWN_ITEM = "INVALID_INVENTORY_ITEM"
NOT_STOCKED = "ITEM_NOT_STOCKED_AT_LOCATION"
RETRY_LATER = {"IDEMPOTENCY_CONCURRENT_REQUEST", "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"}
# Top-level GraphQL error codes worth trying again later (others: the call is refused).
SERVER_TROUBLE = {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"}

log = get_logger(__name__)
D = TypeVar("D", bound=BaseModel)


# -- the adapter ---------------------------------------------------------------------


class _Superseded(Exception):
    """The fence said some items are no longer this push's: ``kept`` are."""

    def __init__(self, kept: set[str]) -> None:
        super().__init__(f"{len(kept)} items still ours")
        self.kept = kept


class _TooCostly(ConnectorUnavailable):
    """A call costs more than Shopify's whole bucket: it can only pass split up."""


@dataclass
class _Pending:
    """One push on its way through the mutation rounds."""

    item: Push
    gid: str
    change_from: int | None
    looked_up: bool  # the gid comes from a lookup in this push (not the caller's cache)


@dataclass
class _Round:
    """What one refused mutation says about the items sent."""

    stale: list[_Pending] = field(default_factory=list)
    unknown: list[_Pending] = field(default_factory=list)
    done: dict[str, PushOutcome] = field(default_factory=dict)


def _search_term(sku: str) -> str:
    escaped = sku.replace("\\", "\\\\").replace('"', '\\"')
    return f'sku:"{escaped}"'


def _chunks(values: Sequence[str], size: int) -> list[Sequence[str]]:
    size = max(1, size)
    return [values[i : i + size] for i in range(0, len(values), size)]


_GID = re.compile(r"^gid://shopify/InventoryItem/[0-9]+$")


class ShopifyChannel:
    """Pushes availability to one Shopify location. Close with :meth:`aclose`."""

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
        self.http = HttpCaller(
            cfg, metrics=metrics, on_call=on_call, transport=transport, headers=headers
        )
        self.pacer = CostPacer(cfg.id, MAX_PACE_WAIT_S, metrics)
        # Requested cost Shopify reported per (operation, items), to pace the next one.
        self._costs: dict[tuple[str, int], float] = {}

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def can_read(self) -> bool:
        return True

    @property
    def max_batch_size(self) -> int:
        """The SKUs one push may carry under a backlog (services/push_pipeline):
        ``inventorySetQuantities`` takes 250 quantities, for 10 points however many."""
        return MAX_PAGE

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- push ------------------------------------------------------------------------

    async def push(self, items: Sequence[Push], fence: Fence | None = None) -> list[PushOutcome]:
        """Set the available quantity of every item (see the module docstring). Every
        write after the first (a round after stale re-reads, a throttled mutation sent
        again) asks ``fence`` first and leaves out the items no longer ours."""
        outcomes: dict[str, PushOutcome] = {}
        looked_up = await self._resolve([i.sku for i in items if not i.channel_ref], outcomes)
        pending: dict[str, _Pending] = {}
        for item in items:
            gid = item.channel_ref or looked_up.get(item.sku)
            if gid is not None:
                pending[item.sku] = _Pending(item, gid, item.previous, item.sku in looked_up)
        reference = f"gid://stockkeeper/ChannelPush/{uuid.uuid4()}"
        stale_rounds = 0
        writes = 0

        async def still_ours() -> None:
            if fence is not None and writes:
                kept = await fence(list(pending))
                if kept != set(pending):
                    raise _Superseded(kept)

        while pending:
            try:
                await still_ours()
                writes += 1
                errors = await self._set(list(pending.values()), reference, still_ours)
            except _Superseded as lost:
                for sku in set(pending) - lost.kept:
                    outcomes[sku] = PushOutcome(sku, "superseded")
                    pending.pop(sku)
                continue
            if not errors:
                for p in pending.values():
                    outcomes[p.item.sku] = PushOutcome(p.item.sku, "ok", p.item.quantity, p.gid)
                break
            found = self._judge(list(pending.values()), errors)
            outcomes.update(found.done)
            for sku in found.done:
                pending.pop(sku, None)
            if found.unknown:
                await self._relookup(found.unknown, pending, outcomes)
            if found.stale:
                stale_rounds += 1
                if stale_rounds > STALE_ROUNDS:
                    raise ConnectorUnavailable(
                        self.id,
                        "set_available",
                        "server_error",
                        f"changeFromQuantity still stale after {STALE_ROUNDS} re-reads "
                        f"({', '.join(p.item.sku for p in found.stale)})",
                    )
                await self._refresh(found.stale, pending, outcomes)
        return [outcomes[i.sku] for i in items]

    async def _resolve(
        self, skus: Sequence[str], outcomes: dict[str, PushOutcome]
    ) -> dict[str, str]:
        """Look ``skus`` up; those Shopify does not have (or has twice) get their outcome."""
        if not skus:
            return {}
        found, doubles = await self._lookup(skus)
        for sku in skus:
            if sku in doubles:
                outcomes[sku] = PushOutcome(
                    sku, "rejected", error=f"{doubles[sku]} inventory items have this SKU"
                )
            elif sku not in found:
                outcomes[sku] = PushOutcome(sku, "unlisted", error="no inventory item has this SKU")
        return found

    def _judge(self, sent: list[_Pending], errors: list[UserError]) -> _Round:
        result = _Round()
        for error in errors:
            if error.code in RETRY_LATER:  # an idempotency key in use or spoilt: later
                raise ConnectorUnavailable(
                    self.id, "set_available", "server_error", self._text(error), retry_after=1.0
                )
            index = error.index()
            if index is None or index >= len(sent):
                if error.code == STALE:  # not said which: re-read them all
                    result.stale = list(sent)
                    continue
                raise self._refused(error)
            p = sent[index]
            sku = p.item.sku
            if error.code == STALE:
                result.stale.append(p)
            elif error.code == UNKNOWN_ITEM and not p.looked_up:
                result.unknown.append(p)  # our cached gid may be stale: look it up again
            elif error.code in (UNKNOWN_ITEM, NOT_STOCKED):
                result.done[sku] = PushOutcome(
                    sku, "unlisted", channel_ref=p.gid, error=self._text(error)
                )
            else:
                result.done[sku] = PushOutcome(
                    sku, "rejected", channel_ref=p.gid, error=self._text(error)
                )
        done = set(result.done)
        result.stale = [p for p in result.stale if p.item.sku not in done]
        return result

    async def _relookup(
        self,
        unknown: list[_Pending],
        pending: dict[str, _Pending],
        outcomes: dict[str, PushOutcome],
    ) -> None:
        found = await self._resolve([p.item.sku for p in unknown], outcomes)
        for p in unknown:
            gid = found.get(p.item.sku)
            if gid is None:
                pending.pop(p.item.sku, None)
            else:
                p.gid, p.looked_up = gid, True

    async def _refresh(
        self, stale: list[_Pending], pending: dict[str, _Pending], outcomes: dict[str, PushOutcome]
    ) -> None:
        """Re-read what Shopify shows for ``stale`` and compare from that next time."""
        current = await self._available([p.gid for p in stale])
        for p in stale:
            shown = current.get(p.gid)
            sku = p.item.sku
            if shown is None:
                outcomes[sku] = PushOutcome(sku, "unlisted", channel_ref=p.gid, error="not stocked")
                pending.pop(sku, None)
            elif shown == p.item.quantity:
                outcomes[sku] = PushOutcome(sku, "ok", shown, p.gid)  # already there
                pending.pop(sku, None)
            else:
                p.change_from = shown

    def _refused(self, error: UserError) -> ConnectorRejected:
        return ConnectorRejected(self.id, "set_available", 200, f"userErrors: {self._text(error)}")

    @staticmethod
    def _text(error: UserError) -> str:
        return f"{error.code or 'ERROR'}: {error.message}"

    # -- read ------------------------------------------------------------------------

    async def read(self, skus: Sequence[str], refs: Mapping[str, str]) -> dict[str, int | None]:
        """What Shopify shows as available at the location; None: no such item there."""
        gids = {sku: refs[sku] for sku in skus if sku in refs}
        missing = [sku for sku in skus if sku not in gids]
        if missing:
            found, _doubles = await self._lookup(missing)
            gids.update(found)
        shown = await self._available(list(gids.values()))
        return {sku: (shown.get(gids[sku]) if sku in gids else None) for sku in skus}

    # -- the three calls -------------------------------------------------------------

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
            except _TooCostly:
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

        await self._in_chunks(list(skus), 2, 1, lookup)
        doubles = {sku: len(ids) for sku, ids in found.items() if len(ids) > 1}
        return {sku: min(ids) for sku, ids in found.items() if sku not in doubles}, doubles

    async def _available(self, gids: Sequence[str]) -> dict[str, int | None]:
        """The available quantity per inventory item gid at the location."""
        shown: dict[str, int | None] = {}

        async def read(chunk: list[str]) -> None:
            variables = {"ids": chunk, "locationId": self.cfg.location_id}
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

    async def _set(
        self, pending: list[_Pending], reference: str, again: Callable[[], Awaitable[None]]
    ) -> list[UserError]:
        """One inventorySetQuantities of every pending item; its userErrors."""
        variables: dict[str, Any] = {
            "input": {
                "name": QUANTITY_NAME,
                "reason": self.cfg.reason,
                "referenceDocumentUri": reference,
                "quantities": [
                    {
                        "inventoryItemId": p.gid,
                        "locationId": self.cfg.location_id,
                        "quantity": p.item.quantity,
                        # Always present: null opts out of the check, absent is an error.
                        "changeFromQuantity": p.change_from,
                    }
                    for p in pending
                ],
            },
        }
        data = await self._graphql(
            "set_available",
            SET_AVAILABLE,
            variables,
            len(pending),
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
    ) -> D:
        """One GraphQL call, paced by the cost bucket, tried again while THROTTLED
        (after ``again``, which may raise to stop it, when one is given)."""
        parse = parser(model)
        cost = self._costs.get((operation, items)) or estimate(operation, items)
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
                    raise _TooCostly(
                        self.id,
                        operation,
                        "rate_limited",
                        f"costs {cost:.0f} points, more than Shopify's whole bucket "
                        f"({status.maximumAvailable:.0f})",
                    )
                wait = self.pacer.wait_for(cost)
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
