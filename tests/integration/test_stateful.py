"""The real services against a simple model, driven by a Hypothesis state machine.

Receipts, adjustments, reservations and their steps, the clock and the expiry sweep run
in random order against PostgreSQL. After every step the stock invariant holds (audit)
and the service's figures, batches and reservation statuses equal the model's. Every
error the service raises must be the one the model predicts, and leave nothing changed.

The services are async and Hypothesis' state machines are not, so the test is a plain
function that owns an event loop and a container; each rule runs its coroutines on that
loop. Examples share one database: each uses its own SKU, order and reference names, and
its teardown expires whatever it left pending.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stockkeeper.api.schemas import ReservationOut
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings, Strategy
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import (
    Conflict,
    DomainError,
    InsufficientStock,
    InvalidRequest,
    NotFound,
    ReservationExpired,
    Shortage,
)
from stockkeeper.domain.reservation import Status
from stockkeeper.services.audit import audit
from stockkeeper.services.coalescer import ReserveCoalescer
from stockkeeper.services.reservations import ReservationView, ReserveRequest
from stockkeeper.services.stock import Adjustment, Receipt
from tests.conftest import FakeClock
from tests.support import base_config

T = TypeVar("T")

DEFAULT_TTL = 900  # reservations.default_ttl_seconds, which the test config leaves alone
SKU_SUFFIXES = ("A", "B", "C", "D")
STOCKED_AT_START = 3  # A, B and C get a receipt first; D only if a rule receives it
LOTS = (None, "L1", "L2")
# Lot expiry in seconds after the example starts; the clock moves past some of them.
EXPIRY_OFFSETS = (None, None, 300, 1200, 4000)
RECEIPT_LOCATIONS = (None, None, "default", "east")
ORDER_LOCATIONS = (None, None, None, "default", "east", "north")
TTLS = (None, None, 60, 1800)
# What a request of a coalesced batch may be (the ``reserve_together`` rule).
TOGETHER = ("new",) * 4 + ("unknown_sku", "duplicate_line", "repeat", "repeat_changed", "again")

# Outcomes seen across all examples, to show the run reached the interesting places.
SEEN: Counter[str] = Counter()


# -- the model -----------------------------------------------------------------------


@dataclass
class MBatch:
    id: int
    sku: str
    location: str
    lot: str | None
    expires_at: datetime | None
    on_hand: int = 0
    unavailable: int = 0
    reserved: int = 0
    committed: int = 0

    @property
    def net(self) -> int:
        return self.on_hand - self.unavailable - self.reserved - self.committed

    @property
    def available(self) -> int:
        """Sellable units, expiry aside."""
        return max(0, self.net)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def shown_available(self, now: datetime) -> int:
        """What the stock reads show: an expired lot is never available."""
        return 0 if self.expired(now) else self.available

    @property
    def shortfall(self) -> int:
        """What was promised beyond the sellable units; units held back beyond on_hand
        promise nothing (D-475)."""
        return max(0, self.reserved + self.committed - max(0, self.on_hand - self.unavailable))

    def sellable(self, now: datetime, location: str | None) -> bool:
        if location is not None and self.location != location:
            return False
        return self.expires_at is None or self.expires_at > now

    def fefo(self) -> tuple[int, float, int]:
        """Dated before undated, soonest first, then by id."""
        if self.expires_at is None:
            return (1, 0.0, self.id)
        return (0, self.expires_at.timestamp(), self.id)

    def as_read(self, now: datetime) -> dict[str, Any]:
        """What a stock read shows of this batch, less its version."""
        return {
            "batch_id": self.id,
            "location": self.location,
            "lot_number": self.lot,
            "expires_at": self.expires_at,
            "on_hand": self.on_hand,
            "unavailable": self.unavailable,
            "reserved": self.reserved,
            "committed": self.committed,
            "oversold": 0,  # nothing here sells beyond on_hand
            "available": self.shown_available(now),
            "shortfall": self.shortfall,
            "expired": self.expired(now),
        }


@dataclass
class MReservation:
    order_id: str
    lines: tuple[OrderLine, ...]
    location: str | None
    expires_at: datetime
    status: Status
    # (line_no, batch_id, quantity), in the order the service lists them.
    allocations: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class MReceipt:
    receipt: Receipt
    body: dict[str, Any]


class StockMachine(RuleBasedStateMachine):
    # Set by the test function before the machine runs.
    loop: ClassVar[asyncio.AbstractEventLoop]
    container: ClassVar[Container]
    clock: ClassVar[FakeClock]
    # Set when reservations go through request coalescing (D-200) instead.
    coalescer: ClassVar[ReserveCoalescer | None] = None
    # The locations of the database, which every example of the test shares (D-424).
    places: ClassVar[set[str]]

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uuid.uuid4().hex[:10]
        self.skus = tuple(f"{self.prefix}-{s}" for s in SKU_SUFFIXES)
        self.t0 = self.clock.now
        self.batches: dict[tuple[str, str, str | None], MBatch] = {}
        self.known_skus: set[str] = set()
        self.orders: dict[str, MReservation] = {}
        self.receipts: list[MReceipt] = []
        self.counter = 0

    # -- plumbing --------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def expect(self, error: type[DomainError], coro: Coroutine[Any, Any, Any]) -> DomainError:
        """The call must fail with exactly ``error``: not a sibling, not success."""
        with pytest.raises(DomainError) as info:
            self.run(coro)
        assert type(info.value) is error, f"expected {error.__name__}, got {info.value!r}"
        SEEN[error.__name__] += 1
        return info.value

    def reserve_call(self, req: ReserveRequest) -> Coroutine[Any, Any, ReservationView]:
        if self.coalescer is not None:
            return self.coalescer.reserve(req)
        return self.container.reservations.reserve(req)

    def ref(self, kind: str) -> str:
        self.counter += 1
        return f"{self.prefix}-{kind}{self.counter}"

    @property
    def now(self) -> datetime:
        return self.clock.now

    def batch_by_id(self, batch_id: int) -> MBatch:
        [b] = [b for b in self.batches.values() if b.id == batch_id]
        return b

    def sku_batches(self, sku: str) -> list[MBatch]:
        return sorted((b for b in self.batches.values() if b.sku == sku), key=lambda b: b.id)

    def level(self, sku: str) -> dict[str, int]:
        bs = self.sku_batches(sku)
        return {
            "on_hand": sum(b.on_hand for b in bs),
            "unavailable": sum(b.unavailable for b in bs),
            "reserved": sum(b.reserved for b in bs),
            "committed": sum(b.committed for b in bs),
            "available": sum(b.shown_available(self.now) for b in bs),
            "shortfall": sum(b.shortfall for b in bs),
        }

    def check_level(self, sku: str, got: dict[str, Any]) -> None:
        want = self.level(sku)
        assert {k: got[k] for k in want} == want, sku

    def move(self, order: MReservation, target: Status) -> None:
        """Release what ``order`` holds and take what ``target`` holds, per batch."""
        for _, batch_id, qty in order.allocations:
            b = self.batch_by_id(batch_id)
            if order.status is Status.PENDING:
                b.reserved -= qty
            elif order.status is Status.CONFIRMED:
                b.committed -= qty
            else:
                raise AssertionError(f"a {order.status} reservation holds no stock")
            if target is Status.CONFIRMED:
                b.committed += qty
            elif target is Status.FULFILLED:
                b.on_hand -= qty
        order.status = target

    def check_view(
        self, view: ReservationView, order: MReservation, *, repeat: bool = False
    ) -> None:
        """``repeat``: the answer to a repeated reserve, which tells a PENDING reservation
        past its expiry as EXPIRED before the sweep has written it so (D-426)."""
        assert view.order_id == order.order_id
        status = order.status
        if repeat and status is Status.PENDING and order.expires_at <= self.now:
            status = Status.EXPIRED
            SEEN["repeat of an overdue reservation"] += 1
        assert view.status is status, (view.status, status)
        assert view.expires_at == order.expires_at
        assert view.location == order.location
        assert [(li.sku, li.quantity) for li in view.lines] == [
            (li.sku, li.quantity) for li in order.lines
        ]
        got = [
            (no, a.batch_id, a.quantity) for no, li in enumerate(view.lines) for a in li.allocations
        ]
        if view.created:
            assert got == order.allocations  # in FEFO order
        else:
            # Read back, they come in batch-id order, not FEFO; see
            # test_allocations_read_back_in_the_order_they_were_made below.
            assert sorted(got) == sorted(order.allocations)
        for li in view.lines:
            for a in li.allocations:
                b = self.batch_by_id(a.batch_id)
                assert b.sku == li.sku
                assert (a.location, a.lot_number) == (b.location, b.lot)

    def pick_order(self, data: st.DataObject) -> MReservation:
        return self.orders[data.draw(st.sampled_from(sorted(self.orders)), label="order")]

    # -- receipts ----------------------------------------------------------------------

    def do_receive(
        self, sku: str, qty: int, location: str | None, lot: str | None, expiry: int | None
    ) -> None:
        expires_at = None if expiry is None else self.t0 + timedelta(seconds=expiry)
        key = (sku, location or "default", lot)
        existing = self.batches.get(key)
        r = Receipt(sku, qty, self.ref("rcpt"), location, lot, expires_at)
        if existing is not None and expires_at is not None and existing.expires_at != expires_at:
            # The lot is known with another expiry date (or none).
            self.expect(Conflict, self.container.stock.receive(r))
            return
        done = self.run(self.container.stock.receive(r))
        assert done.created
        body = done.result.model_dump()
        if existing is None:
            assert body["batch_id"] not in {b.id for b in self.batches.values()}
            existing = MBatch(body["batch_id"], sku, key[1], lot, expires_at)
            self.batches[key] = existing
        else:
            assert body["batch_id"] == existing.id
        existing.on_hand += qty
        self.known_skus.add(sku)
        self.places.add(key[1])
        assert body["location"] == key[1]
        self.check_level(sku, body["level"])
        self.receipts.append(MReceipt(r, body))
        SEEN["received"] += 1

    @initialize(
        qtys=st.lists(st.integers(5, 40), min_size=STOCKED_AT_START, max_size=STOCKED_AT_START),
        lot=st.sampled_from(LOTS),
        expiry=st.sampled_from(EXPIRY_OFFSETS),
    )
    def stock_up(self, qtys: list[int], lot: str | None, expiry: int | None) -> None:
        SEEN["examples"] += 1
        for sku, qty in zip(self.skus, qtys, strict=False):
            self.do_receive(sku, qty, None, lot, expiry)
        # Walk the whole life cycle once, model-checked like any rule, and leave one
        # order pending and one confirmed for the rules to work on.
        lines = (OrderLine(self.skus[0], 1), OrderLine(self.skus[1], 1))
        placed = [self.place(lines, None, None) for _ in range(4)]
        assert None not in placed
        shipped, cancelled, confirmed, _pending = placed
        self.confirm(shipped)
        self.fulfil(shipped)
        self.release(cancelled)
        self.confirm(confirmed)

    @rule(
        sku=st.sampled_from(range(len(SKU_SUFFIXES))),
        qty=st.integers(1, 20),
        location=st.sampled_from(RECEIPT_LOCATIONS),
        lot=st.sampled_from(LOTS),
        expiry=st.sampled_from(EXPIRY_OFFSETS),
        repeat=st.sampled_from([None, None, None, "same", "changed"]),
        data=st.data(),
    )
    def receive(
        self,
        sku: int,
        qty: int,
        location: str | None,
        lot: str | None,
        expiry: int | None,
        repeat: str | None,
        data: st.DataObject,
    ) -> None:
        if repeat is None or not self.receipts:
            self.do_receive(self.skus[sku], qty, location, lot, expiry)
            return
        # A reference already applied: the same request answers the first result and
        # moves nothing; another request under the same reference is a conflict.
        first = data.draw(st.sampled_from(self.receipts), label="receipt")
        if repeat == "same":
            again = self.run(self.container.stock.receive(first.receipt))
            assert not again.created
            assert again.result.model_dump() == first.body
            SEEN["receipt repeated"] += 1
        else:
            r = first.receipt
            other = Receipt(
                r.sku, r.quantity + 1, r.reference_id, r.location, r.lot_number, r.expires_at
            )
            self.expect(Conflict, self.container.stock.receive(other))

    # -- adjustments -------------------------------------------------------------------

    @precondition(lambda self: self.batches)
    @rule(
        data=st.data(),
        quantity=st.sampled_from(["on_hand", "unavailable"]),
        delta=st.one_of(st.none(), st.integers(-12, 12)),
        value=st.integers(0, 25),
        how=st.sampled_from(["batch_id", "batch_id", "batch_id", "sku_only", "wrong_sku"]),
    )
    def adjust(
        self,
        data: st.DataObject,
        quantity: str,
        delta: int | None,
        value: int,
        how: str,
    ) -> None:
        b = data.draw(st.sampled_from(sorted(self.batches.values(), key=lambda b: b.id)))
        sku = b.sku
        batch_id: int | None = b.id
        if how == "sku_only":
            batch_id = None
        elif how == "wrong_sku":
            sku = data.draw(st.sampled_from([s for s in self.skus if s != b.sku]))
        adj = Adjustment(
            sku,
            quantity,  # type: ignore[arg-type]
            "cycle count",
            self.ref("adj"),
            batch_id=batch_id,
            delta=delta,
            set=None if delta is not None else value,
        )
        call = self.container.stock.adjust(adj)
        if how == "wrong_sku":
            self.expect(NotFound, call)
            return
        if how == "sku_only":
            mine = self.sku_batches(sku)
            if len(mine) > 1:
                self.expect(InvalidRequest, call)
                return
            [b] = mine
        current = getattr(b, quantity)
        target = current + delta if delta is not None else value
        if target < 0:
            self.expect(InvalidRequest, call)
            return
        done = self.run(call)
        assert done.created
        assert done.result.batch_id == b.id
        assert done.result.applied_delta == target - current
        setattr(b, quantity, target)
        self.check_level(sku, done.result.level.model_dump())
        SEEN["adjusted"] += 1
        if b.shortfall:
            SEEN["shortfall"] += 1

    # -- reservations ------------------------------------------------------------------

    @rule(
        data=st.data(),
        qtys=st.lists(st.integers(1, 10), min_size=3, max_size=3),
        variant=st.sampled_from(
            ["new"] * 6 + ["duplicate_line", "unknown_sku", "repeat", "repeat_changed"]
        ),
        location=st.sampled_from(ORDER_LOCATIONS),
        ttl=st.sampled_from(TTLS),
    )
    def reserve(
        self,
        data: st.DataObject,
        qtys: list[int],
        variant: str,
        location: str | None,
        ttl: int | None,
    ) -> None:
        if variant.startswith("repeat") and self.orders:
            self.reserve_again(self.pick_order(data), variant == "repeat")
            return
        known = sorted(self.known_skus)
        never = [s for s in self.skus if s not in self.known_skus]
        skus = data.draw(st.lists(st.sampled_from(known), min_size=1, max_size=3, unique=True))
        if variant == "unknown_sku" and never:
            skus.append(never[0])
        lines = tuple(OrderLine(sku, q) for sku, q in zip(skus, qtys, strict=False))
        if variant == "duplicate_line":
            lines = (*lines, OrderLine(lines[0].sku, 1))
        self.place(lines, location, ttl)

    @precondition(lambda self: self.coalescer is not None and self.known_skus)
    @rule(
        data=st.data(),
        kinds=st.lists(st.sampled_from(TOGETHER), min_size=2, max_size=6),
        location=st.sampled_from(ORDER_LOCATIONS),
    )
    def reserve_together(self, data: st.DataObject, kinds: list[str], location: str | None) -> None:
        """Requests sent at once share a coalesced batch (D-290) and are applied in the
        order they were sent: the model serves them one after another. Besides new
        orders a batch may hold an unknown SKU, a SKU named twice, a repeat of a stored
        order (same or other lines) and a copy of a request sent earlier in the batch
        (its repeat if that one was served, a new attempt if it was refused)."""
        known = sorted(self.known_skus)
        never = [s for s in self.skus if s not in self.known_skus]
        reqs: list[ReserveRequest] = []
        for kind in kinds:
            if kind.startswith("repeat") and self.orders:
                o = self.pick_order(data)
                lines = o.lines
                if kind == "repeat_changed":
                    lines = (OrderLine(lines[0].sku, lines[0].quantity + 1), *lines[1:])
                reqs.append(ReserveRequest(o.order_id, lines, None, o.location))
            elif kind == "again" and reqs:
                reqs.append(reqs[data.draw(st.integers(0, len(reqs) - 1), label="copy of")])
            else:
                skus = data.draw(
                    st.lists(st.sampled_from(known), min_size=1, max_size=2, unique=True)
                )
                qtys = data.draw(st.lists(st.integers(1, 10), min_size=2, max_size=2))
                if kind == "unknown_sku" and never:
                    skus.append(never[0])
                lines = tuple(OrderLine(sku, q) for sku, q in zip(skus, qtys, strict=False))
                if kind == "duplicate_line":
                    lines = (*lines, OrderLine(lines[0].sku, 1))
                reqs.append(ReserveRequest(self.ref("order"), lines, None, location))

        async def together() -> list[Any]:
            return await asyncio.gather(
                *(self.reserve_call(r) for r in reqs), return_exceptions=True
            )

        results = self.run(together())

        async def settled(r: Any) -> Any:
            if isinstance(r, BaseException):
                raise r
            return r

        for req, result in zip(reqs, results, strict=True):
            held = self.orders.get(req.order_id)
            if held is None:
                self.place(
                    req.lines, req.location, None, order_id=req.order_id, call=settled(result)
                )
            elif held.lines != req.lines or held.location != req.location:
                self.expect(Conflict, settled(result))
            else:
                view = self.run(settled(result))
                assert not view.created
                self.check_view(view, held, repeat=True)
                SEEN["reserve repeated"] += 1
        SEEN["reserved together"] += 1

    def place(
        self,
        lines: tuple[OrderLine, ...],
        location: str | None,
        ttl: int | None,
        *,
        order_id: str | None = None,
        call: Coroutine[Any, Any, ReservationView] | None = None,
    ) -> MReservation | None:
        """Reserve ``lines`` as a new order: the service must do what the model says."""
        order_id = order_id or self.ref("order")
        call = call or self.reserve_call(ReserveRequest(order_id, lines, ttl, location))
        if len({li.sku for li in lines}) < len(lines) or any(
            li.sku not in self.known_skus for li in lines
        ):
            self.expect(InvalidRequest, call)
            return None
        now = self.now
        shortages: list[Shortage] = []
        allocations: list[tuple[int, int, int]] = []
        for no, li in enumerate(lines):
            candidates = sorted(
                (b for b in self.sku_batches(li.sku) if b.sellable(now, location)),
                key=MBatch.fefo,
            )
            total = sum(b.available for b in candidates)
            if total < li.quantity:
                shortages.append(Shortage(li.sku, li.quantity, total))
                continue
            remaining = li.quantity
            for b in candidates:
                take = min(remaining, b.available)
                if take > 0:
                    allocations.append((no, b.id, take))
                    remaining -= take
        if shortages and location is not None and location not in self.places:
            self.expect(InvalidRequest, call)  # a location nothing named (D-424)
            SEEN["unknown location"] += 1
            return None
        if shortages:
            err = self.expect(InsufficientStock, call)
            assert isinstance(err, InsufficientStock)
            assert err.shortages == shortages
            return None
        view = self.run(call)
        assert view.created
        order = MReservation(
            order_id,
            lines,
            location,
            now + timedelta(seconds=ttl or DEFAULT_TTL),
            Status.PENDING,
            allocations,
        )
        self.orders[order_id] = order
        for _, batch_id, qty in allocations:
            self.batch_by_id(batch_id).reserved += qty
        self.check_view(view, order)
        SEEN["reserved"] += 1
        if len({no for no, _, _ in allocations}) < len(allocations):
            SEEN["line over several batches"] += 1
        return order

    def reserve_again(self, order: MReservation, same: bool) -> None:
        """A repeat answers the reservation as it stands, whatever its status; the same
        order_id with other lines is a conflict."""
        lines = order.lines
        if not same:
            lines = (OrderLine(lines[0].sku, lines[0].quantity + 1), *lines[1:])
        call = self.reserve_call(ReserveRequest(order.order_id, lines, None, order.location))
        if not same:
            self.expect(Conflict, call)
            return
        view = self.run(call)
        assert not view.created
        self.check_view(view, order, repeat=True)
        SEEN["reserve repeated"] += 1

    @precondition(lambda self: self.orders)
    @rule(
        data=st.data(),
        action=st.sampled_from(["release", "confirm", "confirm", "fulfil", "fulfil"]),
        unknown=st.integers(0, 14),
    )
    def act(self, data: st.DataObject, action: str, unknown: int) -> None:
        """Release, confirm or fulfil an order (now and then one that does not exist)."""
        if unknown == 0:
            svc = self.container.reservations
            calls = {"release": svc.release, "confirm": svc.confirm, "fulfil": svc.fulfil}
            self.expect(NotFound, calls[action](self.ref("missing")))
            return
        order = self.pick_order(data)
        {"release": self.release, "confirm": self.confirm, "fulfil": self.fulfil}[action](order)

    def release(self, order: MReservation) -> None:
        status = order.status
        overdue = status is Status.PENDING and order.expires_at <= self.now
        call = self.container.reservations.release(order.order_id, "customer cancelled")
        if status is Status.FULFILLED:
            self.expect(Conflict, call)
            return
        view = self.run(call)
        if overdue:
            self.move(order, Status.EXPIRED)  # too late to cancel: it expired
            SEEN["release of overdue"] += 1
        elif status in (Status.PENDING, Status.CONFIRMED):
            self.move(order, Status.CANCELLED)
            SEEN["released"] += 1
        else:
            SEEN["release repeated"] += 1  # CANCELLED or EXPIRED: no change
        self.check_view(view, order)

    def confirm(self, order: MReservation) -> None:
        status = order.status
        call = self.container.reservations.confirm(order.order_id)
        if status is Status.PENDING and order.expires_at <= self.now:
            # Expired first (and that is committed), then the caller hears it was late.
            self.expect(ReservationExpired, call)
            self.move(order, Status.EXPIRED)
            SEEN["confirm of overdue"] += 1
            return
        if status is Status.EXPIRED:
            self.expect(ReservationExpired, call)
            return
        if status in (Status.CANCELLED, Status.FULFILLED):
            self.expect(Conflict, call)
            return
        view = self.run(call)
        if status is Status.PENDING:
            self.move(order, Status.CONFIRMED)
            SEEN["confirmed"] += 1
        else:
            SEEN["confirm repeated"] += 1
        self.check_view(view, order)

    def fulfil(self, order: MReservation) -> None:
        status = order.status
        call = self.container.reservations.fulfil(order.order_id)
        if status is Status.EXPIRED or (status is Status.PENDING and order.expires_at <= self.now):
            self.expect(ReservationExpired, call)
            return
        if status in (Status.PENDING, Status.CANCELLED):
            self.expect(Conflict, call)
            return
        if status is Status.CONFIRMED and any(
            self.batch_by_id(bid).on_hand < qty for _, bid, qty in order.allocations
        ):
            # A count put less on hand than the order ships: refused, nothing changes.
            self.expect(Conflict, call)
            SEEN["fulfil refused for shortfall"] += 1
            return
        view = self.run(call)
        if status is Status.CONFIRMED:
            self.move(order, Status.FULFILLED)
            SEEN["fulfilled"] += 1
        else:
            SEEN["fulfil repeated"] += 1
        self.check_view(view, order)

    # -- time --------------------------------------------------------------------------

    @rule(
        seconds=st.sampled_from([0, 30, 300, DEFAULT_TTL + 1, 1801]),
        sweep=st.booleans(),
    )
    def time_passes(self, seconds: int, sweep: bool) -> None:
        """The clock moves on; with ``sweep`` the expiry worker runs once."""
        self.clock.advance(seconds)
        if not sweep:
            return
        due = [
            o
            for o in self.orders.values()
            if o.status is Status.PENDING and o.expires_at <= self.now
        ]
        assert self.run(self.container.reservations.expire_due(100)) == len(due)
        for o in due:
            self.move(o, Status.EXPIRED)
        SEEN["expired by sweep"] += len(due)

    # -- after every step --------------------------------------------------------------

    @invariant()
    def state_matches_the_model(self) -> None:
        """The invariant holds, and figures, batches and statuses are the model's."""
        c = self.container

        async def audited() -> None:
            async with c.pool.acquire() as conn:
                report = await audit(conn)
            assert report.clean, report.render()

        async def everything() -> list[Any]:
            return await asyncio.gather(
                audited(),
                c.stock.get_many(list(self.skus)),
                *(c.reservations.get(o) for o in self.orders),
            )

        _, levels, *views = self.run(everything())
        # Unknown SKUs are simply absent.
        assert [lv.sku for lv in levels] == [s for s in self.skus if s in self.known_skus]
        for got in levels:
            self.check_level(got.sku, asdict(got))
            have = sorted(
                ({k: v for k, v in asdict(g).items() if k != "version"} for g in got.batches),
                key=lambda g: g["batch_id"],
            )
            assert have == [b.as_read(self.now) for b in self.sku_batches(got.sku)]
        for view, order in zip(views, self.orders.values(), strict=True):
            self.check_view(view, order)

    def teardown(self) -> None:
        # Leave nothing overdue for the next example's expiry sweep to count.
        self.clock.advance(30 * 86_400)
        while self.run(self.container.reservations.expire_due(1000)):
            pass


@pytest.fixture
def own_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop for this sync test alone (pytest-asyncio's is not running here)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.mark.parametrize("coalesced", [False, True], ids=["direct", "coalesced"])
@pytest.mark.parametrize("strategy", list(Strategy), ids=str)
def test_services_follow_the_model(
    db_url: str,
    clock: FakeClock,
    own_loop: asyncio.AbstractEventLoop,
    strategy: Strategy,
    coalesced: bool,
) -> None:
    cfg = base_config(db_url, concurrency={"strategy": strategy.value})
    container = own_loop.run_until_complete(build(Settings.model_validate(cfg), clock=clock))
    try:
        StockMachine.loop = own_loop
        StockMachine.container = container
        StockMachine.clock = clock
        StockMachine.places = {"default"}
        StockMachine.coalescer = (
            ReserveCoalescer(container.reservations, window_ms=1) if coalesced else None
        )
        SEEN.clear()
        run_state_machine_as_test(
            StockMachine,
            settings=settings(
                max_examples=25,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        own_loop.run_until_complete(container.close())
    # The run reached the places worth checking, not only the error paths.
    wanted = ["reserved", "confirmed", "fulfilled", "released", "InsufficientStock", "adjusted"]
    if coalesced:
        wanted.append("reserved together")
    missing = [w for w in wanted if not SEEN[w]]
    assert not missing, f"never reached {missing}: {dict(SEEN)}"


async def test_allocations_read_back_in_the_order_they_were_made(
    container: Container, clock: FakeClock
) -> None:
    later = clock.now + timedelta(days=9)
    sooner = clock.now + timedelta(days=1)
    # The lot received first (lower batch id) expires last, so FEFO takes it second.
    await container.stock.receive(
        Receipt("SKU-O", 2, "r-late", lot_number="LATE", expires_at=later)
    )
    await container.stock.receive(
        Receipt("SKU-O", 2, "r-soon", lot_number="SOON", expires_at=sooner)
    )
    req = ReserveRequest("order-o", (OrderLine("SKU-O", 3),))
    first = await container.reservations.reserve(req)
    assert first.created
    assert [a.lot_number for a in first.lines[0].allocations] == ["SOON", "LATE"]
    again = await container.reservations.reserve(req)
    assert not again.created
    assert ReservationOut.of(again) == ReservationOut.of(first)
    read = await container.reservations.get("order-o")
    assert ReservationOut.of(read) == ReservationOut.of(first)
