"""Receipts, adjustments and stock reads."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict

from stockkeeper.domain.errors import Conflict, InvalidRequest, NotFound
from stockkeeper.domain.events import ADJUSTED, RECEIVED, Event
from stockkeeper.domain.quantities import Delta
from stockkeeper.domain.reservation import EntryType
from stockkeeper.services.unit import Clock, record_change, transaction, utcnow
from stockkeeper.store import idempotency, stock
from stockkeeper.store.pool import Conn, Pool, Row
from stockkeeper.store.stock import Movement, SkuLevel

DEFAULT_LOCATION = "default"
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Receipt:
    sku: str
    quantity: int
    reference_id: str
    location: str | None = None
    lot_number: str | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        # The HTTP schema refuses these first; a receipt built in code (a WMS receipt,
        # a script) gets the same clear answer instead of failing deeper down.
        if self.quantity <= 0:
            raise InvalidRequest(
                f"a receipt's quantity must be positive, not {self.quantity}", "body.quantity"
            )


@dataclass(frozen=True, slots=True)
class Adjustment:
    sku: str
    quantity: Literal["on_hand", "unavailable"]
    reason: str
    reference_id: str
    batch_id: int | None = None
    delta: int | None = None
    set: int | None = None


class LevelView(BaseModel):
    """A SKU's figures right after a receipt or adjustment."""

    model_config = ConfigDict(frozen=True)

    sku: str
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    oversold: int
    available: int
    shortfall: int
    version: int
    updated_at: datetime

    @classmethod
    def of(cls, lv: SkuLevel) -> LevelView:
        f = lv.level.figures
        return cls(
            sku=lv.sku,
            on_hand=f.on_hand,
            unavailable=f.unavailable,
            reserved=f.reserved,
            committed=f.committed,
            oversold=f.oversold,
            available=lv.level.available,
            shortfall=lv.level.shortfall,
            version=lv.version,
            updated_at=lv.updated_at,
        )


class Received(BaseModel):
    """A receipt as applied: the batch it went to, and the SKU's figures after it. Kept
    with its reference_id (as JSON), so a repeat answers the same."""

    model_config = ConfigDict(frozen=True)

    reference_id: str
    batch_id: int
    sku: str
    quantity: int
    location: str
    lot_number: str | None
    expires_at: datetime | None
    level: LevelView


class Adjusted(BaseModel):
    """An adjustment as applied: the change it made (0 when already at the asked value)
    and the SKU's figures after it. Kept with its reference_id, as a receipt is."""

    model_config = ConfigDict(frozen=True)

    reference_id: str
    sku: str
    batch_id: int
    quantity: Literal["on_hand", "unavailable"]
    delta: int | None
    set: int | None
    reason: str
    applied_delta: int
    level: LevelView


@dataclass(frozen=True, slots=True)
class Applied(Generic[R]):
    """The result of a request applied once per reference: ``created`` False on a repeat."""

    result: R
    created: bool


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One movement of a batch's figures, as the ledger keeps it (deltas)."""

    id: int
    batch_id: int
    entry_type: str
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    oversold: int
    source: str
    reference_id: str | None
    reason: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerPage:
    """A page of a SKU's ledger; ``next`` is the ``after`` of the next page, if any."""

    sku: str
    entries: list[LedgerEntry]
    next: int | None


def _hash(doc: Any) -> str:
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class BatchFigures:
    """One batch's figures as they stand (an expired lot has nothing available)."""

    batch_id: int
    location: str
    lot_number: str | None
    expires_at: datetime | None
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    oversold: int
    available: int
    shortfall: int
    expired: bool
    version: int

    @classmethod
    def of(cls, r: Row, now: datetime) -> BatchFigures:
        f = stock.figures_from_row(r)
        expired = r["expires_at"] is not None and r["expires_at"] <= now
        return cls(
            batch_id=r["id"],
            location=r["location"],
            lot_number=r["lot_number"],
            expires_at=r["expires_at"],
            on_hand=f.on_hand,
            unavailable=f.unavailable,
            reserved=f.reserved,
            committed=f.committed,
            oversold=f.oversold,
            available=0 if expired else f.available,
            shortfall=f.shortfall,
            expired=expired,
            version=r["version"],
        )


@dataclass(frozen=True, slots=True)
class SkuStock:
    """A SKU's figures (sums over its batches) and its batches, read in one snapshot."""

    sku: str
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    oversold: int
    available: int
    shortfall: int
    version: int
    updated_at: datetime
    batches: tuple[BatchFigures, ...]

    @classmethod
    def of(cls, lv: SkuLevel, batches: Sequence[BatchFigures]) -> SkuStock:
        f = lv.level.figures
        return cls(
            sku=lv.sku,
            on_hand=f.on_hand,
            unavailable=f.unavailable,
            reserved=f.reserved,
            committed=f.committed,
            oversold=f.oversold,
            available=lv.level.available,
            shortfall=lv.level.shortfall,
            version=lv.version,
            updated_at=lv.updated_at,
            batches=tuple(batches),
        )


def _with_carried(move: Movement, carried: list[tuple[int, int]]) -> list[Movement]:
    """``move`` into a batch and the owed units ``carry_oversold`` moved onto it from the
    SKU's other batches, (batch, units) each, as the ledger records them (D-485)."""
    landed = Delta(oversold=sum(n for _, n in carried))
    return [
        Movement(move.batch_id, move.sku, move.delta + landed),
        *(Movement(b, move.sku, Delta(oversold=-n)) for b, n in carried),
    ]


class Stock:
    """Stock that arrives, stock that is corrected, and stock as it stands."""

    def __init__(self, pool: Pool, clock: Clock = utcnow) -> None:
        self.pool = pool
        self.clock = clock

    async def _repeat(
        self, conn: Conn, kind: str, reference_id: str, h: str, result: type[R]
    ) -> Applied[R]:
        """The first result of a claimed ``reference_id`` (or Conflict: another request)."""
        stored = await idempotency.get_reference(conn, kind, reference_id)
        assert stored is not None
        if stored.request_hash != h:
            raise Conflict(f"reference_id {reference_id} was already used for another {kind}")
        return Applied(result.model_validate(stored.body), created=False)

    async def receive(
        self, r: Receipt, conn: Conn | None = None, *, source: str = "api"
    ) -> Applied[Received]:
        """Add received units to a batch (created on first receipt), once per reference."""
        doc = {
            "sku": r.sku,
            "quantity": r.quantity,
            "location": r.location,
            "lot_number": r.lot_number,
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
        }
        location = r.location or DEFAULT_LOCATION
        async with transaction(self.pool, conn) as c:
            h = _hash(doc)
            # The claim, the SKU, location and batch and the units in one round trip
            # (D-300).
            started = await stock.receive_start(
                c, r.reference_id, h, r.sku, location, r.lot_number, r.expires_at, r.quantity
            )
            if started is None:
                return await self._repeat(c, "receipt", r.reference_id, h, Received)
            batch_id, expiry, owed = started
            if r.expires_at is not None and expiry != r.expires_at:
                has = f"expiry {expiry.isoformat()}" if expiry else "no expiry"
                raise Conflict(f"lot {r.lot_number!r} of {r.sku} at {location} has {has}")
            carried: list[tuple[int, int]] = []
            if owed and (expiry is None or expiry > self.clock()):
                # Units the SKU owes on other batches are served from these first (D-485).
                carried = await stock.carry_oversold(c, r.sku, batch_id, r.quantity)
            moves = _with_carried(Movement(batch_id, r.sku, Delta(on_hand=r.quantity)), carried)
            body = {
                "reference_id": r.reference_id,
                "batch_id": batch_id,
                **doc,
                "location": location,
                # The batch's, as stored: a receipt into a dated lot need not repeat it.
                "expires_at": expiry.isoformat() if expiry else None,
            }
            levels = await record_change(
                c,
                moves,
                entry_type=EntryType.RECEIPT,
                source=source,
                reference_id=r.reference_id,
                now=self.clock(),
                events=[Event(RECEIVED, body, sku=r.sku, source=source)],
            )
            done = Received.model_validate({**body, "level": LevelView.of(levels[r.sku])})
            await idempotency.store_reference(
                c, "receipt", r.reference_id, done.model_dump(mode="json")
            )
        return Applied(done, created=True)

    async def adjust(
        self, a: Adjustment, conn: Conn | None = None, *, source: str = "api"
    ) -> Applied[Adjusted]:
        """Correct on_hand or unavailable of one batch, by a delta or to a value."""
        if (a.delta is None) == (a.set is None):
            raise InvalidRequest("give exactly one of delta or set", "body")
        doc = {
            "sku": a.sku,
            "batch_id": a.batch_id,
            "quantity": a.quantity,
            "delta": a.delta,
            "set": a.set,
            "reason": a.reason,
        }
        async with transaction(self.pool, conn) as c:
            h = _hash(doc)
            # The claim and the batch locks in one round trip (D-300).
            batches = await stock.adjust_start(c, a.reference_id, h, a.sku)
            if batches is None:
                return await self._repeat(c, "adjustment", a.reference_id, h, Adjusted)
            if a.batch_id is not None:
                found = [b for b in batches if b.id == a.batch_id]
                if not found:
                    raise NotFound(f"no batch {a.batch_id} of sku {a.sku}")
                batch = found[0]
            else:
                if not batches:
                    raise NotFound(f"unknown sku {a.sku}")
                if len(batches) > 1:
                    raise InvalidRequest(
                        f"sku {a.sku} has {len(batches)} batches; say which with batch_id",
                        "body.batch_id",
                    )
                batch = batches[0]
            current = getattr(batch.figures, a.quantity)
            target = current + a.delta if a.delta is not None else a.set
            assert target is not None
            if target < 0:
                raise InvalidRequest(
                    f"{a.quantity} of batch {batch.id} would go below zero",
                    "body.set" if a.set is not None else "body.delta",
                )
            change = target - current
            delta = Delta(on_hand=change) if a.quantity == "on_hand" else Delta(unavailable=change)
            body: dict[str, Any] = {
                "reference_id": a.reference_id,
                **doc,
                "batch_id": batch.id,
                "applied_delta": change,
            }
            if change:
                await stock.apply_movements(c, [Movement(batch.id, a.sku, delta)])
                freed = change if a.quantity == "on_hand" else -change
                carried: list[tuple[int, int]] = []
                owed = any(b.figures.oversold for b in batches if b.id != batch.id)
                if freed > 0 and owed and batch.is_sellable(self.clock(), None):
                    # Units the SKU owes on other batches are served first, as by a
                    # receipt (D-485, D-490).
                    carried = await stock.carry_oversold(c, a.sku, batch.id, freed)
                moves = _with_carried(Movement(batch.id, a.sku, delta), carried)
                levels = await record_change(
                    c,
                    moves,
                    entry_type=EntryType.ADJUSTMENT,
                    source=source,
                    reference_id=a.reference_id,
                    now=self.clock(),
                    reason=a.reason,
                    events=[Event(ADJUSTED, body, sku=a.sku, source=source)],
                )
            else:
                # Already at the asked value: nothing moves, nothing to tell anyone.
                levels = await stock.sku_levels(c, [a.sku], self.clock())
            adjusted = Adjusted.model_validate({**body, "level": LevelView.of(levels[a.sku])})
            await idempotency.store_reference(
                c, "adjustment", a.reference_id, adjusted.model_dump(mode="json")
            )
        return Applied(adjusted, created=True)

    async def get(self, sku: str) -> SkuStock:
        items = await self.get_many([sku])
        if not items:
            raise NotFound(f"unknown sku {sku}")
        return items[0]

    async def get_many(self, skus: list[str]) -> list[SkuStock]:
        now = self.clock()
        async with (
            self.pool.acquire() as c,
            c.transaction(readonly=True, isolation="repeatable_read"),
        ):
            levels = await stock.sku_levels(c, skus, now)
            batches = await stock.sku_batches(c, list(levels))
        by_sku: dict[str, list[BatchFigures]] = {s: [] for s in levels}
        for r in batches:
            by_sku[r["sku"]].append(BatchFigures.of(r, now))
        return [SkuStock.of(levels[s], by_sku[s]) for s in skus if s in levels]

    async def ledger(self, sku: str, after: int, limit: int) -> LedgerPage:
        """The SKU's ledger entries after ``after``, oldest first, ``limit`` at most."""
        async with self.pool.acquire() as c:
            if not await stock.known_skus(c, [sku]):
                raise NotFound(f"unknown sku {sku}")
            rows = await stock.ledger_page(c, sku, after, limit + 1)
        entries = [
            LedgerEntry(
                id=r["id"],
                batch_id=r["batch_id"],
                entry_type=r["entry_type"],
                on_hand=r["d_on_hand"],
                unavailable=r["d_unavailable"],
                reserved=r["d_reserved"],
                committed=r["d_committed"],
                oversold=r["d_oversold"],
                source=r["source"],
                reference_id=r["reference_id"],
                reason=r["reason"],
                created_at=r["created_at"],
            )
            for r in rows[:limit]
        ]
        nxt = entries[-1].id if len(rows) > limit else None
        return LedgerPage(sku, entries, nxt)

    async def expire_lots(self, limit: int, *, source: str = "expiry") -> int:
        """Move the sellable units of lots past their expiry to ``unavailable``.

        Reserved and committed units stay promised; if they are released later the
        next sweep moves them too. Returns how many batches were touched.
        """
        now = self.clock()
        async with transaction(self.pool) as c:
            lots = await stock.claim_expired_lots(c, now, limit)
            for lot in lots:
                moves = [
                    Movement(
                        lot.id,
                        lot.sku,
                        Delta(unavailable=lot.figures.net),
                        reference_id=f"lot-expired:{lot.id}",
                    )
                ]
                await stock.apply_movements(c, moves)
                body = {
                    "sku": lot.sku,
                    "batch_id": lot.id,
                    "lot_number": lot.lot_number,
                    "expires_at": lot.expires_at.isoformat() if lot.expires_at else None,
                    "quantity": "unavailable",
                    "applied_delta": lot.figures.net,
                    "reason": "lot expired",
                }
                await record_change(
                    c,
                    moves,
                    entry_type=EntryType.ADJUSTMENT,
                    source=source,
                    reference_id=None,
                    now=now,
                    reason="lot expired",
                    events=[Event(ADJUSTED, body, sku=lot.sku, source=source)],
                )
        return len(lots)
