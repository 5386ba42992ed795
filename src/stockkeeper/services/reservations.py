"""Reserve, release, confirm, fulfil and expire: stock held for orders.

Three concurrency strategies, chosen by ``concurrency.strategy``, all of which make
overselling impossible:

- ``conditional``: read without locks, allocate in memory, then one guarded
  ``UPDATE ... WHERE available >= n`` per batch. PostgreSQL re-checks the guard after
  waiting for a concurrent writer, so it can only fail when the stock is really gone.
- ``row_lock``: ``SELECT ... FOR UPDATE`` of the SKUs' batches in id order, then write.
- ``optimistic``: read versions, allocate, compare-and-swap on the version; on a lost
  race re-read and retry, at most ``concurrency.max_retries`` times, then ``Conflict``.

Every strategy touches batch rows in id order and SKU rows in name order, so
multi-line orders cannot deadlock each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from stockkeeper.config import Strategy
from stockkeeper.domain.allocation import (
    BatchStock,
    LineAllocation,
    allocate,
    check_lines,
    lines_of,
    same_lines,
    unknown_location,
)
from stockkeeper.domain.backoff import Backoff
from stockkeeper.domain.errors import (
    Conflict,
    DomainError,
    InsufficientStock,
    InvalidRequest,
    NotFound,
    ReservationExpired,
    TryAgain,
)
from stockkeeper.domain.events import ALLOCATED, EVENT_FOR_STATUS, Event, order_key
from stockkeeper.domain.quantities import Delta
from stockkeeper.domain.reservation import (
    Action,
    EntryType,
    Status,
    movement,
    plan,
)
from stockkeeper.observability.metrics import Metrics

# ReservationView and ReserveRequest are re-exported: every caller of the use cases
# names them from here.
from stockkeeper.services.reservation_views import ReservationView as ReservationView
from stockkeeper.services.reservation_views import ReserveRequest as ReserveRequest
from stockkeeper.services.reservation_views import as_of, event_lines, view_of
from stockkeeper.services.unit import Clock, record_change, savepoint, transaction, utcnow
from stockkeeper.store import reservations as repo
from stockkeeper.store import stock
from stockkeeper.store.errors import WouldGoNegative
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.store.reservations import AllocationRow, ReservationRow
from stockkeeper.store.stock import Movement
from stockkeeper.store.transactions import RetryTransaction, alone, retried, retrying

# The optimistic retry after a lost race: full jitter spreads the retries of a hot SKU
# out; 2 ms after the first loss, doubling, at most 128 ms.
LOST_RACE_BACKOFF = Backoff(base_s=0.002, cap_s=0.128, jitter=1.0)


class _LostRace(Exception):
    """A guarded write found the stock changed under it; re-read and try again."""


class Reservations:
    """The reservation use cases."""

    def __init__(
        self,
        pool: Pool,
        metrics: Metrics,
        *,
        strategy: Strategy = Strategy.CONDITIONAL,
        max_retries: int = 5,
        default_ttl_seconds: int = 900,
        max_ttl_seconds: int = 7 * 86_400,
        clock: Clock = utcnow,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.strategy = strategy
        self.max_retries = max_retries
        self.default_ttl = default_ttl_seconds
        self.max_ttl = max_ttl_seconds
        self.clock = clock

    # -- reserve ---------------------------------------------------------------------

    async def reserve(
        self,
        req: ReserveRequest,
        conn: Conn | None = None,
        *,
        source: str = "api",
        now: datetime | None = None,
        savepoint: bool = True,
    ) -> ReservationView:
        """Hold stock for every line of an order, or for none of them.

        ``now``: the caller's clock reading (the reservation expires ``ttl`` after it).
        ``savepoint=False`` with ``conn`` (the order saga, D-310): no savepoint of its
        own; a refusal (a DomainError) leaves at most the reservation row, without lines,
        in the caller's transaction, which the caller takes back or rolls back.
        """
        return await self._reserve_counted(req, conn, source, now=now, savepoint=savepoint)

    async def _reserve_counted(
        self,
        req: ReserveRequest,
        conn: Conn | None,
        source: str,
        *,
        now: datetime | None = None,
        savepoint: bool = True,
    ) -> ReservationView:
        try:
            if conn is not None and not savepoint:
                # The caller's transaction as it is (the order saga, D-310).
                view = await self._reserve(conn, req, source, now=now)
            elif conn is None or not conn.is_in_transaction():
                view = await retried(lambda: self._reserve_alone(req, source, conn, now))
            else:
                async with transaction(self.pool, conn) as c:
                    view = await self._reserve(c, req, source, now=now)
        except DomainError as exc:
            self.metrics.reservations.labels(result=exc.slug).inc()
            raise
        self.metrics.reservations.labels(result="created" if view.created else "repeat").inc()
        return view

    async def _reserve_alone(
        self, req: ReserveRequest, source: str, conn: Conn | None, now: datetime | None
    ) -> ReservationView:
        async with transaction(self.pool, conn) as c:
            return await self._reserve(c, req, source, now=now)

    async def _reserve(
        self,
        conn: Conn,
        req: ReserveRequest,
        source: str,
        *,
        now: datetime | None = None,
    ) -> ReservationView:
        check_lines(req.lines)
        if retrying() and self.strategy is Strategy.OPTIMISTIC:
            # The first try lost its race and was rolled back (D-301): back off before
            # reading again, holding no lock yet.
            await asyncio.sleep(LOST_RACE_BACKOFF.delay(1))
        now = now or self.clock()
        ttl = req.ttl_seconds or self.default_ttl
        if ttl > self.max_ttl:
            raise InvalidRequest(f"ttl_seconds may be at most {self.max_ttl}", "body.ttl_seconds")
        expires_at = now + timedelta(seconds=ttl)
        asked = req.lines_doc()
        skus = [li.sku for li in req.lines]
        lock = self.strategy is Strategy.ROW_LOCK
        rid, batches, unknown = await repo.start(
            conn, req.order_id, req.location, asked, expires_at, skus, lock=lock
        )
        if rid is None:
            return await self._existing(conn, req, now)
        if unknown:  # told by the insert's statement (D-372)
            raise InvalidRequest(f"unknown sku: {', '.join(sorted(unknown))}", "body.lines")
        try:
            plan_ = await self._allocate(conn, req, now, batches)
        except InsufficientStock:
            if req.location is not None and not await stock.known_locations(conn, [req.location]):
                raise unknown_location(req.location) from None
            raise
        movements = [
            Movement(a.batch_id, a.sku, Delta(reserved=a.quantity))
            for la in plan_
            for a in la.allocations
        ]
        row = ReservationRow(
            rid, req.order_id, Status.PENDING, req.location, asked, expires_at, None, now, now
        )
        allocs = [
            AllocationRow(no, a.sku, a.batch_id, a.quantity, a.lot_number, a.location)
            for no, la in enumerate(plan_)
            for a in la.allocations
        ]
        view = view_of(row, allocs, created=True)
        await record_change(
            conn,
            movements,
            entry_type=EntryType.ORDER_ALLOCATE,
            source=source,
            reference_id=req.order_id,
            now=now,
            reservation_lines=(rid, plan_),
            events=[
                Event(
                    ALLOCATED,
                    {
                        "order_id": req.order_id,
                        "status": Status.PENDING.value,
                        "expires_at": expires_at.isoformat(),
                        "lines": event_lines(allocs),
                        "source": source,
                    },
                    key=order_key(req.order_id),
                )
            ],
        )
        return view

    async def _existing(self, conn: Conn, req: ReserveRequest, now: datetime) -> ReservationView:
        found = await repo.with_allocations(conn, req.order_id)
        assert found is not None  # the insert conflicted on it
        row, allocs = found
        if not same_lines(lines_of(row.lines), req.lines) or row.location != req.location:
            raise Conflict(f"order {req.order_id} already holds a reservation for other lines")
        return view_of(as_of(row, now), allocs, created=False)

    async def _allocate(
        self,
        conn: Conn,
        req: ReserveRequest,
        now: datetime,
        batches: list[BatchStock] | None = None,
    ) -> list[LineAllocation]:
        """``batches``: as the reservation's insert read them (locked for ``row_lock``),
        None: read here."""
        skus = [li.sku for li in req.lines]
        lock = self.strategy is Strategy.ROW_LOCK
        guarded = (
            stock.reserve_guarded if self.strategy is Strategy.CONDITIONAL else stock.reserve_cas
        )
        # A retry after a first try rolled back (D-301) counts that try as the first.
        first = 1 if retrying() else 0
        for attempt in range(first, self.max_retries + 1):
            if attempt > first or batches is None:
                batches = await stock.read_batches(conn, skus, lock=lock)
            result = allocate(req.lines, batches, now=now, location=req.location)
            allocs = [a for la in result for a in la.allocations]
            if lock:
                await stock.apply_movements(
                    conn, [Movement(a.batch_id, a.sku, Delta(reserved=a.quantity)) for a in allocs]
                )
                return result
            if alone(conn):
                # The use case has the transaction to itself (D-301): a miss rolls all of
                # it back, which lets go of every row the failed guard still holds, and
                # the whole reservation runs again. No savepoint on the happy path.
                if await guarded(conn, allocs):
                    return result
                self.metrics.reservation_retries.labels(strategy=self.strategy.value).inc()
                raise RetryTransaction
            # Every try runs in a savepoint, even a single guarded UPDATE: an UPDATE whose
            # guard fails after waiting for a concurrent writer still holds the row lock
            # (PostgreSQL locks the newest version before re-checking the WHERE). The
            # rollback lets that row go; kept, it would be held out of lock order while
            # the retry locks another lot, and two orders could deadlock.
            try:
                async with savepoint(conn):
                    if not await guarded(conn, allocs):
                        raise _LostRace
                return result
            except _LostRace:
                pass
            self.metrics.reservation_retries.labels(strategy=self.strategy.value).inc()
            if self.strategy is Strategy.OPTIMISTIC:
                await asyncio.sleep(LOST_RACE_BACKOFF.delay(attempt + 1))
        raise TryAgain("the stock changed too often while reserving; try again")

    # -- release, confirm, fulfil ----------------------------------------------------

    async def release(
        self,
        order_id: str,
        reason: str | None = None,
        conn: Conn | None = None,
        *,
        source: str = "api",
    ) -> ReservationView:
        return await self._step(order_id, Action.RELEASE, reason, conn, source, by_order=False)

    async def confirm(
        self,
        order_id: str,
        conn: Conn | None = None,
        *,
        source: str = "api",
        by_order: bool = False,
    ) -> ReservationView:
        """``by_order``: the order's payment confirms its reservation; anyone else
        confirming an order's reservation is a conflict (D-425)."""
        return await self._step(order_id, Action.CONFIRM, None, conn, source, by_order=by_order)

    async def fulfil(
        self, order_id: str, conn: Conn | None = None, *, source: str = "api"
    ) -> ReservationView:
        return await self._step(order_id, Action.FULFIL, None, conn, source, by_order=False)

    async def _step(
        self,
        order_id: str,
        action: Action,
        reason: str | None,
        conn: Conn | None,
        source: str,
        *,
        by_order: bool,
    ) -> ReservationView:
        async with transaction(self.pool, conn) as c:
            found = await repo.lock_for_step(c, order_id)
            if found is None:
                raise NotFound(f"no reservation for order {order_id}")
            row, allocs = found.row, found.allocations
            step = plan(action, row.status, row.expires_at, self.clock())
            if step.target is Status.CONFIRMED and found.of_order and not by_order:
                # Confirmed behind the saga's back, the order would wait for its payment
                # past its due time with the stock committed, never expiring (D-425).
                raise Conflict(
                    f"the reservation is order {order_id}'s: the order's payment confirms it"
                )
            if step.target is not None:
                assert step.entry_type is not None
                await self._move(c, [(row, allocs)], step.target, step.entry_type, reason, source)
                row = replace(
                    row, status=step.target, reason=reason or row.reason, updated_at=self.clock()
                )
        if step.expired_first:
            # The expiry is committed; the caller still learns it came too late.
            raise ReservationExpired("the reservation expired before it was confirmed")
        return view_of(row, allocs, created=False)

    async def _move(
        self,
        conn: Conn,
        items: Sequence[tuple[ReservationRow, Sequence[AllocationRow]]],
        target: Status,
        entry_type: EntryType,
        reason: str | None,
        source: str,
        *,
        bulk: bool = False,
    ) -> None:
        """``bulk`` (the expiry worker's batch): a constant number of statements however
        many reservations: the batches locked in id order first, then one statement
        each for the statuses, the batch figures, the ledger and the events."""
        movements: list[Movement] = []
        events: list[Event] = []
        for row, allocs in items:
            for a in allocs:
                delta = movement(entry_type, row.status, a.quantity)
                movements.append(Movement(a.batch_id, a.sku, delta, reference_id=row.order_id))
            payload: dict[str, Any] = {
                "order_id": row.order_id,
                "status": target.value,
                "previous_status": row.status.value,
                "lines": event_lines(allocs),
                "source": source,
            }
            if reason:
                payload["reason"] = reason
            events.append(Event(EVENT_FOR_STATUS[target], payload, key=order_key(row.order_id)))
        try:
            if bulk:
                await repo.set_statuses(conn, [row.id for row, _ in items], target, reason)
                await stock.lock_batches_of(conn, {m.sku for m in movements})
                await stock.apply_movements(conn, movements, already_locked=True)
            else:
                # One reservation: its status and its batches in one round trip (D-300).
                (row, _), *more = items
                assert not more, "one reservation at a time unless bulk"
                await repo.move(
                    conn, row.id, target, reason, [(m.batch_id, m.delta) for m in movements]
                )
        except WouldGoNegative:
            # Only FULFIL can get here: a count (adjustment) put on_hand below what was
            # committed, so shipping would take it below zero. Refuse in domain terms;
            # the ledger is never written negative.
            raise Conflict(
                "a batch of this order has less on hand than it would ship; "
                "receive or adjust the stock first"
            ) from None
        await record_change(
            conn,
            movements,
            entry_type=entry_type,
            source=source,
            reference_id=None,
            now=self.clock(),
            reason=reason,
            events=events,
        )

    # -- expiry ----------------------------------------------------------------------

    async def expire_due(self, limit: int, *, source: str = "expiry") -> int:
        """Expire up to ``limit`` overdue PENDING reservations; return how many."""
        async with transaction(self.pool) as c:
            rows = await repo.claim_overdue(c, self.clock(), limit)
            if not rows:
                return 0
            allocs = await repo.allocations(c, [r.id for r in rows])
            await self._move(
                c,
                [(r, allocs[r.id]) for r in rows],
                Status.EXPIRED,
                EntryType.ORDER_EXPIRE,
                "expired",
                source,
                bulk=True,
            )
        self.metrics.reservations_expired.inc(len(rows))
        return len(rows)

    async def get(self, order_id: str) -> ReservationView:
        async with self.pool.acquire() as c:
            row = await repo.get(c, order_id)
            if row is None:
                raise NotFound(f"no reservation for order {order_id}")
            allocs = (await repo.allocations(c, [row.id]))[row.id]
        return view_of(row, allocs, created=False)
