"""The Shopify channel: availability at one location, or at several, through the Admin
GraphQL API.

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
* ``nodes(ids:)`` with each item's ``inventoryLevel(locationId:)``: what Shopify shows
  (a shop with several mapped locations: one aliased level per location, one read).

Several locations (``locations`` in the config, D-280): a push carries the figure of
each mapped location (:class:`~stockkeeper.connectors.channels.AtLocation`); every
location whose figure differs from what it shows is one quantity entry of the same
mutation, each with its own ``changeFromQuantity``; a stale one is re-read and set at
that location only. The calls themselves are in :mod:`.shopify_calls`.

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

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from stockkeeper.connectors.channels import Fence, Push, PushOutcome
from stockkeeper.connectors.http import ConnectorRejected, ConnectorUnavailable
from stockkeeper.connectors.shopify_calls import (
    MAX_PACE_WAIT_S as MAX_PACE_WAIT_S,
)
from stockkeeper.connectors.shopify_calls import ShopifyCalls
from stockkeeper.connectors.shopify_wire import MAX_PAGE, UserError

T = TypeVar("T")

# Rounds of re-reading stale changeFromQuantity values before the push is given back.
STALE_ROUNDS = 3

# userErrors codes of inventorySetQuantities, by what they mean for the item named.
STALE = "CHANGE_FROM_QUANTITY_STALE"
UNKNOWN_ITEM = "INVALID_INVENTORY_ITEM"
NOT_STOCKED = "ITEM_NOT_STOCKED_AT_LOCATION"
RETRY_LATER = {"IDEMPOTENCY_CONCURRENT_REQUEST", "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"}


class _Superseded(Exception):
    """The fence said some items are no longer this push's: ``kept`` are."""

    def __init__(self, kept: set[str]) -> None:
        super().__init__(f"{len(kept)} items still ours")
        self.kept = kept


@dataclass
class _Pending:
    """One quantity entry (a SKU at one location) on its way through the rounds."""

    item: Push
    location: str
    quantity: int
    gid: str
    change_from: int | None
    looked_up: bool  # the gid comes from a lookup in this push (not the caller's cache)

    @property
    def key(self) -> tuple[str, str]:
        return (self.item.sku, self.location)


@dataclass
class _Round:
    """What one refused mutation says about the entries sent."""

    stale: list[_Pending] = field(default_factory=list)
    unknown: list[_Pending] = field(default_factory=list)
    unstocked: list[_Pending] = field(default_factory=list)
    done: dict[str, PushOutcome] = field(default_factory=dict)


@dataclass
class _Book:
    """A push's bookkeeping: entries still to set, what each location shows once set,
    locations that do not stock an item, and SKUs already settled."""

    pending: dict[tuple[str, str], _Pending] = field(default_factory=dict)
    shown: dict[str, dict[str, int]] = field(default_factory=dict)
    unstocked: dict[str, list[str]] = field(default_factory=dict)
    outcomes: dict[str, PushOutcome] = field(default_factory=dict)
    gids: dict[str, str] = field(default_factory=dict)  # inventory item gid per SKU

    def skus(self) -> list[str]:
        return list(dict.fromkeys(sku for sku, _ in self.pending))

    def drop(self, sku: str) -> None:
        for key in [k for k in self.pending if k[0] == sku]:
            self.pending.pop(key)

    def settle(self, outcome: PushOutcome) -> None:
        self.outcomes[outcome.sku] = outcome
        self.drop(outcome.sku)

    def set(self, p: _Pending, quantity: int) -> None:
        self.shown.setdefault(p.item.sku, {})[p.location] = quantity
        self.pending.pop(p.key, None)


class ShopifyChannel(ShopifyCalls):
    """Pushes availability to the shop's mapped locations. Close with :meth:`aclose`."""

    @property
    def can_read(self) -> bool:
        return True

    @property
    def located(self) -> bool:
        """Whether the shop has several mapped locations (pushes carry each figure)."""
        return self.cfg.location_map() is not None

    @property
    def max_batch_size(self) -> int:
        """The SKUs one push may carry under a backlog (services/push_pipeline):
        ``inventorySetQuantities`` takes 250 quantities, for 10 points however many."""
        return MAX_PAGE

    # -- push ------------------------------------------------------------------------

    def _entries(self, item: Push, gid: str, looked_up: bool, book: _Book) -> None:
        """The quantity entries of one item: its one figure at the location, or each
        location whose figure is not what it shows already."""
        if not item.locations:
            p = _Pending(
                item, self.cfg.primary_location, item.quantity, gid, item.previous, looked_up
            )
            book.pending[p.key] = p
            return
        for at in item.locations:
            if at.previous is not None and at.previous == at.quantity:
                book.shown.setdefault(item.sku, {})[at.location_id] = at.quantity
                continue
            p = _Pending(item, at.location_id, at.quantity, gid, at.previous, looked_up)
            book.pending[p.key] = p

    async def push(self, items: Sequence[Push], fence: Fence | None = None) -> list[PushOutcome]:
        """Set the available quantity of every item (see the module docstring). Every
        write after the first (a round after stale re-reads, a throttled mutation sent
        again) asks ``fence`` first and leaves out the items no longer ours."""
        book = _Book()
        looked_up = await self._resolve([i.sku for i in items if not i.channel_ref], book)
        for item in items:
            gid = item.channel_ref or looked_up.get(item.sku)
            if gid is not None:
                book.gids[item.sku] = gid
                self._entries(item, gid, item.sku in looked_up, book)
        reference = f"gid://stockkeeper/ChannelPush/{uuid.uuid4()}"
        stale_rounds = 0
        writes = 0

        async def still_ours() -> None:
            if fence is not None and writes:
                skus = book.skus()
                kept = await fence(skus)
                if kept != set(skus):
                    raise _Superseded(kept)

        while book.pending:
            sent = list(book.pending.values())
            try:
                await still_ours()
                writes += 1
                errors = await self._set([self._quantity(p) for p in sent], reference, still_ours)
            except _Superseded as lost:
                for sku in set(book.skus()) - lost.kept:
                    book.settle(PushOutcome(sku, "superseded"))
                continue
            if not errors:
                for p in sent:
                    book.set(p, p.quantity)
                break
            found = self._judge(sent, errors)
            for outcome in found.done.values():
                book.settle(outcome)
            for p in found.unstocked:
                self._unstocked(p, book)
            if found.unknown:
                await self._relookup(found.unknown, book)
            stale = [p for p in found.stale if p.key in book.pending]
            if stale:
                stale_rounds += 1
                if stale_rounds > STALE_ROUNDS:
                    raise ConnectorUnavailable(
                        self.id,
                        "set_available",
                        "server_error",
                        f"changeFromQuantity still stale after {STALE_ROUNDS} re-reads "
                        f"({', '.join(p.item.sku for p in stale)})",
                    )
                await self._refresh(stale, book)
        return [self._outcome(i, book.gids.get(i.sku), book) for i in items]

    @staticmethod
    def _quantity(p: _Pending) -> dict[str, object]:
        return {
            "inventoryItemId": p.gid,
            "locationId": p.location,
            "quantity": p.quantity,
            # Always present: null opts out of the check, absent is an error.
            "changeFromQuantity": p.change_from,
        }

    def _outcome(self, item: Push, gid: str | None, book: _Book) -> PushOutcome:
        settled = book.outcomes.get(item.sku)
        if settled is not None:
            return settled
        shown = book.shown.get(item.sku, {})
        away = book.unstocked.get(item.sku, [])
        note = f"not stocked at {', '.join(away)}" if away else None
        if not item.locations:
            return PushOutcome(item.sku, "ok", shown[self.cfg.primary_location], gid)
        if not shown:
            return PushOutcome(item.sku, "unlisted", channel_ref=gid, error=note)
        return PushOutcome(item.sku, "ok", sum(shown.values()), gid, note, dict(shown))

    def _unstocked(self, p: _Pending, book: _Book) -> None:
        """The item is not stocked at the entry's location: a single-location shop does
        not list it; a shop with several goes on at its other locations."""
        sku = p.item.sku
        if not p.item.locations:
            book.settle(PushOutcome(sku, "unlisted", channel_ref=p.gid, error="not stocked"))
            return
        book.unstocked.setdefault(sku, []).append(p.location)
        book.pending.pop(p.key, None)

    async def _resolve(self, skus: Sequence[str], book: _Book) -> dict[str, str]:
        """Look ``skus`` up; those Shopify does not have (or has twice) get their outcome."""
        if not skus:
            return {}
        found, doubles = await self._lookup(skus)
        for sku in skus:
            if sku in doubles:
                book.settle(
                    PushOutcome(
                        sku, "rejected", error=f"{doubles[sku]} inventory items have this SKU"
                    )
                )
            elif sku not in found:
                book.settle(PushOutcome(sku, "unlisted", error="no inventory item has this SKU"))
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
            elif error.code == UNKNOWN_ITEM:
                result.done[sku] = PushOutcome(
                    sku, "unlisted", channel_ref=p.gid, error=self._text(error)
                )
            elif error.code == NOT_STOCKED and p.item.locations:
                result.unstocked.append(p)
            elif error.code == NOT_STOCKED:
                result.done[sku] = PushOutcome(
                    sku, "unlisted", channel_ref=p.gid, error=self._text(error)
                )
            else:
                result.done[sku] = PushOutcome(
                    sku, "rejected", channel_ref=p.gid, error=self._text(error)
                )
        done = set(result.done)
        result.stale = [p for p in result.stale if p.item.sku not in done]
        result.unstocked = [p for p in result.unstocked if p.item.sku not in done]
        return result

    async def _relookup(self, unknown: list[_Pending], book: _Book) -> None:
        skus = list(dict.fromkeys(p.item.sku for p in unknown))
        found = await self._resolve(skus, book)
        for p in book.pending.values():
            gid = found.get(p.item.sku)
            if p.item.sku in skus and gid is not None:
                p.gid, p.looked_up = gid, True
                book.gids[p.item.sku] = gid

    async def _refresh(self, stale: list[_Pending], book: _Book) -> None:
        """Re-read what Shopify shows for ``stale`` (each at its own location) and
        compare from that next time."""
        for location in dict.fromkeys(p.location for p in stale):
            here = [p for p in stale if p.location == location]
            current = await self._available([p.gid for p in here], location)
            for p in here:
                shown = current.get(p.gid)
                if shown is None:
                    self._unstocked(p, book)
                elif shown == p.quantity:
                    book.set(p, shown)  # already there
                else:
                    p.change_from = shown

    def _refused(self, error: UserError) -> ConnectorRejected:
        return ConnectorRejected(self.id, "set_available", 200, f"userErrors: {self._text(error)}")

    @staticmethod
    def _text(error: UserError) -> str:
        return f"{error.code or 'ERROR'}: {error.message}"

    # -- read ------------------------------------------------------------------------

    async def read(self, skus: Sequence[str], refs: Mapping[str, str]) -> dict[str, int | None]:
        """What Shopify shows as available (summed over the mapped locations of a shop
        with several); None: no such item there."""
        if self.located:
            at = await self.read_locations(skus, refs)
            out: dict[str, int | None] = {}
            for sku in skus:
                levels = [q for q in (at.get(sku) or {}).values() if q is not None]
                out[sku] = sum(levels) if levels else None
            return out
        location = self.cfg.primary_location
        return await self._read_by_gid(skus, refs, lambda gids: self._available(gids, location))

    async def read_locations(
        self, skus: Sequence[str], refs: Mapping[str, str]
    ) -> dict[str, dict[str, int | None] | None]:
        """Per SKU, what each mapped location shows (None: not stocked there); None for a
        SKU Shopify has no inventory item for. One read of every location per page."""
        mapping = self.cfg.location_map() or ((self.cfg.primary_location, None),)
        locations = [gid for gid, _ in mapping]
        return await self._read_by_gid(skus, refs, lambda gids: self._levels(gids, locations))

    async def _read_by_gid(
        self,
        skus: Sequence[str],
        refs: Mapping[str, str],
        read: Callable[[list[str]], Awaitable[Mapping[str, T | None]]],
    ) -> dict[str, T | None]:
        """``read`` per SKU through its inventory item. A cached reference that reads
        back as nothing may name an item since deleted and made again under the same SKU
        (a merchant re-creating a product): such SKUs are looked up by SKU once more and
        read again, as a push does on an unknown item, before they count as not listed
        (D-486)."""
        gids = await self._gids(skus, refs)
        shown = dict(await read(list(gids.values())))
        cached = [
            s for s in skus if s in refs and gids.get(s) == refs[s] and shown.get(refs[s]) is None
        ]
        if cached:
            found, _doubles = await self._lookup(cached)
            fresh = {s: gid for s, gid in found.items() if gid != refs[s]}
            if fresh:
                shown.update(await read(list(fresh.values())))
                gids.update(fresh)
        return {sku: (shown.get(gids[sku]) if sku in gids else None) for sku in skus}

    async def _gids(self, skus: Sequence[str], refs: Mapping[str, str]) -> dict[str, str]:
        gids = {sku: refs[sku] for sku in skus if sku in refs}
        missing = [sku for sku in skus if sku not in gids]
        if missing:
            found, _doubles = await self._lookup(missing)
            gids.update(found)
        return gids
