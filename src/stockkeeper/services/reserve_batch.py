"""A coalesced batch of reservations applied set-based: a constant number of statements
whatever the batch's size (D-290).

1. insert the reservation rows of every new order id (one statement); read the ones
   that already existed (two statements, only when there are some);
2. lock and read the batch rows of every SKU of the batch, in id order (one statement;
   one more to tell unknown SKUs from SKUs without batches, only when there are some);
3. decide in memory, request by request in arrival order (``domain.reserve_batch``);
4. refused rows dropped (only when there are some), then one statement for the lines,
   the guarded write of the batch figures, the ledger and the SKU versions (D-362),
   then the levels and the events with their NOTIFY (``announce_levels``).

The order ids are taken before any stock lock, as a single reserve takes its one, so a
batch and a direct reserve of the same order id cannot wait on each other in a cycle.
Under the batch's own row locks the three strategies converge: nothing can change the
rows between the read and the write, so ``conditional``'s guard cannot miss,
``optimistic``'s compare-and-swap cannot lose and ``row_lock`` already holds its locks;
every strategy runs this same path.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from stockkeeper.domain.allocation import OrderLine, lines_of, unknown_location
from stockkeeper.domain.errors import DomainError, InsufficientStock, TryAgain
from stockkeeper.domain.events import ALLOCATED, Event, order_key
from stockkeeper.domain.quantities import Delta
from stockkeeper.domain.reservation import EntryType, Status
from stockkeeper.domain.reserve_batch import (
    BatchRequest,
    Fresh,
    Held,
    Outcome,
    checked,
    plan_batch,
    row_owners,
)
from stockkeeper.services.reservation_views import (
    ReservationView,
    ReserveRequest,
    as_of,
    event_lines,
    view_of,
)
from stockkeeper.services.reservations import Reservations
from stockkeeper.services.unit import announce_levels, transaction
from stockkeeper.store import reserve_batch as repo
from stockkeeper.store import stock
from stockkeeper.store.errors import Deadlock
from stockkeeper.store.pool import Conn
from stockkeeper.store.reservations import AllocationRow, ReservationRow
from stockkeeper.store.stock import Movement

# A batch that PostgreSQL picked as a deadlock victim is retried whole this many times
# (nothing of it committed), then each of its requests answers 409 conflict.
DEADLOCK_RETRIES = 2

Answer = ReservationView | DomainError


@dataclass(slots=True, eq=False)
class Turn:
    """A batch's place in its coalescer's cut order (D-360).

    Several batches of one process may be in flight; each waits for the batch cut
    before it (``previous``) to have taken its order ids before it takes a connection
    and takes its own, and to have had its locking statement return before it sends
    its own. Row locks are then requested, and so granted, in cut order: the first
    request to arrive gets the stock first whatever the number in flight. Every wait
    is on an earlier batch, which never waits on a later one, so the chain cannot
    close a cycle; and a batch waiting on it holds a connection only when the one it
    waits on holds one too. ``release`` (always reached) lets the next batch go
    whatever became of this one.
    """

    previous: Turn | None = None
    on_locked: Callable[[], None] | None = None
    inserted: asyncio.Event = field(default_factory=asyncio.Event)
    locked: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: bool = False  # on the previous batch, for tests

    async def _wait(self, step: Callable[[Turn], asyncio.Event]) -> None:
        prev = self.previous
        if prev is None or step(prev).is_set():
            return
        self.waiting = True
        try:
            await step(prev).wait()
        finally:
            self.waiting = False

    async def before_insert(self) -> None:
        await self._wait(lambda t: t.inserted)

    def has_inserted(self) -> None:
        self.inserted.set()

    async def before_lock(self) -> None:
        await self._wait(lambda t: t.locked)

    def has_locked(self) -> None:
        self.inserted.set()
        if not self.locked.is_set():
            self.locked.set()
            self.previous = None  # no chain of references through every batch
            if self.on_locked is not None:
                self.on_locked()

    def release(self) -> None:
        """The batch is done with the order (it failed, retries, or has locked)."""
        self.has_locked()


async def _where_unknown(
    c: Conn, reqs: Sequence[BatchRequest | DomainError], outcomes: list[Outcome]
) -> list[Outcome]:
    """The outcomes, a shortage at a location that does not exist told as such (D-424):
    one statement, and only when a request at a named location came up short."""
    short = {
        r.location
        for r, o in zip(reqs, outcomes, strict=True)
        if isinstance(o, InsufficientStock) and isinstance(r, BatchRequest) and r.location
    }
    if not short:
        return outcomes
    unknown = short - await stock.known_locations(c, short)
    told: list[Outcome] = []
    for r, o in zip(reqs, outcomes, strict=True):
        at = r.location if isinstance(r, BatchRequest) else None
        if isinstance(o, InsufficientStock) and at is not None and at in unknown:
            o = unknown_location(at)
        told.append(o)
    return told


def _doc(lines: Sequence[OrderLine]) -> list[dict[str, int | str]]:
    return [{"sku": li.sku, "quantity": li.quantity} for li in lines]


class BatchReserver:
    """Applies a batch of reservations in one transaction, each all or none."""

    def __init__(self, reservations: Reservations) -> None:
        self.reservations = reservations

    async def reserve_batch(
        self,
        reqs: Sequence[ReserveRequest],
        *,
        source: str = "api",
        after_each: Callable[[], None] | None = None,
        conn: Conn | None = None,
        now: datetime | None = None,
        turn: Turn | None = None,
    ) -> list[Answer]:
        """Each request's answer, in order: a view (201 when ``created``, else the 200
        repeat) or its own domain error. ``after_each`` runs once per request after the
        batch's writes, before its commit (a failpoint for crash tests). ``now``: the
        caller's clock reading (each reservation expires its ttl after it). ``turn``: the
        batch's place in the order of the batches in flight (released on return)."""
        svc = self.reservations
        answers: list[Answer] | None = None
        try:
            for _ in range(DEADLOCK_RETRIES + 1):
                try:
                    answers = await self._apply(reqs, source, after_each, conn, now, turn)
                    break
                except Deadlock:
                    if conn is not None:
                        raise  # the caller's transaction is lost; it decides
                # A retry goes after the batches cut later: its turn has passed.
                if turn is not None:
                    turn.release()
                    turn = None
        finally:
            if turn is not None:
                turn.release()
        if answers is None:
            answers = [
                TryAgain(f"order {r.order_id} is being reserved concurrently; try again")
                for r in reqs
            ]
        # One increment per outcome, not per request.
        outcomes = Counter(
            a.slug if isinstance(a, DomainError) else "created" if a.created else "repeat"
            for a in answers
        )
        for result, n in outcomes.items():
            svc.metrics.reservations.labels(result=result).inc(n)
        return answers

    async def _apply(
        self,
        reqs: Sequence[ReserveRequest],
        source: str,
        after_each: Callable[[], None] | None,
        conn: Conn | None,
        now: datetime | None,
        turn: Turn | None,
    ) -> list[Answer]:
        svc = self.reservations
        now = now or svc.clock()
        checked_reqs: list[BatchRequest | DomainError] = []
        for asked in reqs:
            try:
                checked_reqs.append(
                    checked(
                        asked.order_id,
                        asked.lines,
                        asked.location,
                        asked.ttl_seconds,
                        now=now,
                        default_ttl=svc.default_ttl,
                        max_ttl=svc.max_ttl,
                    )
                )
            except DomainError as exc:
                checked_reqs.append(exc)
        valid = [r for r in checked_reqs if isinstance(r, BatchRequest)]
        if not valid:
            return [r for r in checked_reqs if isinstance(r, DomainError)]
        # The first valid copy of each order id is the one inserted.
        first: dict[str, BatchRequest] = {}
        for r in valid:
            first.setdefault(r.order_id, r)
        if turn is not None:
            await turn.before_insert()
        async with transaction(svc.pool, conn) as c:
            ids = await repo.insert_reservations(
                c,
                [
                    repo.NewReservation(r.order_id, r.location, _doc(r.lines), r.expires_at)
                    for r in first.values()
                ],
            )
            if turn is not None:
                turn.has_inserted()
            taken_ids = [o for o in first if o not in ids]
            existing = await repo.stored(c, taken_ids)
            held: dict[str, Held | None] = dict.fromkeys(taken_ids)
            for o, (row, _) in existing.items():
                held[o] = Held(lines_of(row.lines), row.location)
            skus = sorted({li.sku for r in valid for li in r.lines})
            if turn is not None:
                await turn.before_lock()
            batches = await stock.read_batches(c, skus, lock=True)
            if turn is not None:
                turn.has_locked()
            known = {b.sku for b in batches}
            if without := [s for s in skus if s not in known]:
                known |= await stock.known_skus(c, without)
            outcomes = plan_batch(checked_reqs, batches, known_skus=known, stored=held, now=now)
            outcomes = await _where_unknown(c, checked_reqs, outcomes)
            answers = await self._write(c, checked_reqs, outcomes, ids, existing, source, now)
            if after_each is not None:
                for _ in reqs:
                    after_each()
        return answers

    async def _write(
        self,
        c: Conn,
        reqs: Sequence[BatchRequest | DomainError],
        outcomes: Sequence[Outcome],
        ids: dict[str, int],
        existing: dict[str, tuple[ReservationRow, list[AllocationRow]]],
        source: str,
        now: datetime,
    ) -> list[Answer]:
        owners = row_owners(reqs, outcomes)
        # Rows inserted for order ids no request of the batch holds go again.
        await repo.drop_reservations(c, [rid for o, rid in ids.items() if o not in owners])
        # An order id whose row was inserted with one copy's content and is held by
        # another copy (the first was refused) takes the holder's content.
        inserted_by: dict[str, int] = {}
        for i, r in enumerate(reqs):
            if isinstance(r, BatchRequest) and r.order_id not in inserted_by:
                inserted_by[r.order_id] = i
        rewrites: dict[int, repo.NewReservation] = {}
        for o, i in owners.items():
            if i != inserted_by[o]:
                r = reqs[i]
                assert isinstance(r, BatchRequest)
                rewrites[ids[o]] = repo.NewReservation(o, r.location, _doc(r.lines), r.expires_at)
        await repo.rewrite_reservations(c, rewrites)

        lines: list[repo.NewLine] = []
        movements: list[Movement] = []
        events: list[Event] = []
        views: dict[int, ReservationView] = {}
        for o, i in owners.items():
            r, fresh = reqs[i], outcomes[i]
            assert isinstance(r, BatchRequest)
            assert isinstance(fresh, Fresh)
            rid = ids[o]
            allocs: list[AllocationRow] = []
            for no, la in enumerate(fresh.allocations):
                for a in la.allocations:
                    lines.append(repo.NewLine(rid, no, a.sku, a.batch_id, a.quantity))
                    movements.append(
                        Movement(a.batch_id, a.sku, Delta(reserved=a.quantity), reference_id=o)
                    )
                    allocs.append(
                        AllocationRow(no, a.sku, a.batch_id, a.quantity, a.lot_number, a.location)
                    )
            row = ReservationRow(
                rid, o, Status.PENDING, r.location, _doc(r.lines), r.expires_at, None, now, now
            )
            views[i] = view_of(row, allocs, created=True)
            events.append(
                Event(
                    ALLOCATED,
                    {
                        "order_id": o,
                        "status": Status.PENDING.value,
                        "expires_at": r.expires_at.isoformat(),
                        "lines": event_lines(allocs),
                        "source": source,
                    },
                    key=order_key(o),
                )
            )
        if movements:
            if not await repo.write_reserved(c, lines, movements, source=source):
                # Impossible under the batch's own locks; were it to happen, the whole
                # batch rolls back rather than keep a half-applied write.
                raise RuntimeError("a guarded reserve missed under the batch's own locks")
            # record_change's second half: the ledger and the bump went with the lines.
            await announce_levels(
                c,
                {m.sku for m in movements},
                entry_type=EntryType.ORDER_ALLOCATE,
                source=source,
                now=now,
                events=events,
                bumped=True,
            )
        answers: list[Answer] = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, DomainError):
                answers.append(outcome)
            elif isinstance(outcome, Fresh):
                answers.append(views[i])
            elif outcome.of is not None:
                answers.append(_view_again(views[outcome.of]))
            else:
                r = reqs[i]
                assert isinstance(r, BatchRequest)
                row_, allocs_ = existing[r.order_id]
                answers.append(view_of(as_of(row_, now), allocs_, created=False))
        return answers


def _view_again(view: ReservationView) -> ReservationView:
    """A repeat within the batch answers the reservation an earlier copy made (200)."""
    return ReservationView(
        view.order_id,
        view.status,
        view.expires_at,
        view.lines,
        False,
        view.location,
        view.reason,
    )
