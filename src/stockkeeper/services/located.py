"""Channels with several locations (Shopify locations, D-280): the figure of each
location at push time, what each acknowledged, and drift repair per location.

The per-SKU sync row keeps its claim, lease and fencing; a push of a SKU on such a
channel carries one :class:`~stockkeeper.connectors.channels.AtLocation` per mapped
location, computed when the push is sent from the stock of our locations mapped to it
(:meth:`~stockkeeper.services.channel_rules.RulesService.located_figures`), with what
that location showed last (``channel_location_state``) as its ``changeFromQuantity``.
A location whose figure is what it shows is left out of the mutation; a SKU whose
every location shows its figure needs no call at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from stockkeeper.connectors.channels import AtLocation, PushOutcome
from stockkeeper.domain.propagation import SyncStatus
from stockkeeper.services.channel_rules import RulesService
from stockkeeper.services.unit import Clock, transaction
from stockkeeper.store import channel_drift as drift
from stockkeeper.store import channel_locations as locations
from stockkeeper.store import channel_sync as repo
from stockkeeper.store import stock
from stockkeeper.store.pool import Conn, Pool

Figures = dict[str, tuple[AtLocation, ...]]


@runtime_checkable
class LocatedReader(Protocol):
    """An adapter that reads a SKU's level at each of its channel's locations."""

    @property
    def id(self) -> str: ...

    async def read_locations(
        self, skus: Sequence[str], refs: Mapping[str, str]
    ) -> dict[str, dict[str, int | None] | None]: ...


@dataclass(frozen=True, slots=True)
class LocatedDrift:
    checked: int
    drifted: int
    unlisted: int


class Located:
    """The per-location side of propagation for the channels that have several."""

    def __init__(self, pool: Pool, rules: RulesService, clock: Clock, notify: str) -> None:
        self.pool = pool
        self.rules = rules
        self.clock = clock
        self.notify = notify  # the senders' NOTIFY channel, woken by a repair

    async def figures(
        self, channel: str, claimed: Sequence[repo.Claimed]
    ) -> tuple[Figures, list[repo.Claimed]]:
        """Per claimed SKU its figure at each location, and the SKUs whose every
        location already shows its figure (settled without a call). What a location
        shows is forgotten where the SKU's row says we never told the channel anything
        (a resync): then the figure is sent with ``changeFromQuantity`` null."""
        skus = [c.sku for c in claimed]
        async with self.pool.acquire() as conn:
            now = await self.rules.located_figures(conn, channel, skus)
            known = await locations.states(conn, channel, skus)
        out: Figures = {}
        noop: list[repo.Claimed] = []
        for c in claimed:
            mine = known.get(c.sku, {})
            at = tuple(
                AtLocation(
                    location_id,
                    figure,
                    mine[location_id].shown
                    if c.previous is not None and location_id in mine
                    else None,
                )
                for location_id, figure in now.get(c.sku, {}).items()
            )
            out[c.sku] = at
            if at and all(a.previous == a.quantity for a in at):
                noop.append(c)
        return out, noop

    @staticmethod
    async def acknowledged(
        conn: Conn, channel: str, outcomes: Sequence[PushOutcome], settled: set[str]
    ) -> None:
        """What each location shows after the push, for the SKUs whose acknowledgement
        their claim's token let through (``settled``), in the settling transaction."""
        rows = [
            locations.LocationFigure(o.sku, location_id, shown, shown)
            for o in outcomes
            if o.sku in settled and o.locations
            for location_id, shown in sorted(o.locations.items())
        ]
        await locations.pushed(conn, channel, rows)

    async def reconcile(
        self,
        adapter: LocatedReader,
        page: int,
        on_page: Callable[[int], None] | None = None,
    ) -> LocatedDrift:
        """Drift repair per location: read every SKU at every mapped location, compare
        each with its figure now, remember what each shows, and make the SKU due where
        any location differs (that location alone is then set: the others show their
        figure already)."""
        channel = adapter.id
        after, checked, drifted, unlisted = "", 0, 0, 0
        while True:
            async with self.pool.acquire() as conn:
                rows = await drift.reconcile_page(conn, channel, after, page)
            if not rows:
                break
            after = rows[-1].sku
            todo = [r for r in rows if not r.in_flight]
            refs = {r.sku: r.channel_ref for r in todo if r.channel_ref}
            shown = await adapter.read_locations([r.sku for r in todo], refs)
            async with transaction(self.pool) as conn:
                found = await self._compare(conn, channel, todo, shown)
            checked += found.checked
            drifted += found.drifted
            unlisted += found.unlisted
            if on_page is not None:
                on_page(len(rows))
        return LocatedDrift(checked, drifted, unlisted)

    async def _compare(
        self,
        conn: Conn,
        channel: str,
        todo: Sequence[drift.Listed],
        shown: Mapping[str, dict[str, int | None] | None],
    ) -> LocatedDrift:
        skus = [r.sku for r in todo]
        levels = await stock.sku_levels(conn, skus, self.clock())
        figures = await self.rules.located_figures(conn, channel, [s for s in skus if s in levels])
        reads: list[locations.LocatedReadBack] = []
        seen: list[locations.LocationFigure] = []
        for r in todo:
            if r.sku not in levels:
                continue
            mine = figures[r.sku]
            at = shown.get(r.sku)
            stocked = [q for q in (at or {}).values() if q is not None]
            total = sum(stocked) if stocked else None
            drift = at is not None and any(
                at.get(loc) is not None and at.get(loc) != fig for loc, fig in mine.items()
            )
            reads.append(
                locations.LocatedReadBack(
                    r.sku, total, levels[r.sku].version, sum(mine.values()), r.claim_seq, drift
                )
            )
            seen += [
                locations.LocationFigure(r.sku, loc, fig, (at or {}).get(loc))
                for loc, fig in mine.items()
            ]
        after = await locations.repair_drift(conn, channel, reads)
        await locations.read_back(conn, channel, [s for s in seen if s.sku in after])
        drifted = sum(1 for rb in reads if rb.drifted and after.get(rb.sku) is SyncStatus.PENDING)
        unlisted = sum(1 for rb in reads if after.get(rb.sku) is SyncStatus.UNLISTED)
        if drifted:
            await repo.notify_senders(conn, self.notify)
        return LocatedDrift(len(reads), drifted, unlisted)
