"""A coalesced batch of reservations decided in memory: who gets what, in arrival order.

The service reads the batch rows of every SKU of the batch once, locked, and the
reservations already stored for its order ids; :func:`plan_batch` then serves the
requests one after another against those figures, as if each were applied alone after
the one before it: the earlier request gets the stock first (D-200), each is all or
none, and each gets its own outcome. No I/O here; the service writes the outcomes with
one statement per table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from stockkeeper.domain.allocation import (
    BatchStock,
    LineAllocation,
    OrderLine,
    allocate,
    check_lines,
    same_lines,
)
from stockkeeper.domain.errors import Conflict, DomainError, InvalidRequest, TryAgain
from stockkeeper.domain.quantities import Delta


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One request of the batch, checked: its lines and when its hold would end."""

    order_id: str
    lines: tuple[OrderLine, ...]
    location: str | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Held:
    """What a reservation stored before the batch asked for (to recognise a repeat)."""

    lines: tuple[OrderLine, ...]
    location: str | None


@dataclass(frozen=True, slots=True)
class Fresh:
    """The request holds new stock: these allocations, FEFO, one per line."""

    allocations: tuple[LineAllocation, ...]


@dataclass(frozen=True, slots=True)
class Repeat:
    """The same order again, same lines: answer the reservation it already has, the
    one stored before the batch (``of`` None) or the one request ``of`` made in it."""

    of: int | None = None


Outcome = Fresh | Repeat | DomainError


def checked(
    order_id: str,
    lines: tuple[OrderLine, ...],
    location: str | None,
    ttl_seconds: int | None,
    *,
    now: datetime,
    default_ttl: int,
    max_ttl: int,
) -> BatchRequest:
    """The request as the batch applies it, or InvalidRequest (before any I/O)."""
    check_lines(lines)
    ttl = ttl_seconds or default_ttl
    if ttl > max_ttl:
        raise InvalidRequest(f"ttl_seconds may be at most {max_ttl}", "body.ttl_seconds")
    return BatchRequest(order_id, lines, location, now + timedelta(seconds=ttl))


def _other_lines(order_id: str) -> Conflict:
    return Conflict(f"order {order_id} already holds a reservation for other lines")


def plan_batch(
    reqs: Sequence[BatchRequest | DomainError],
    batches: Sequence[BatchStock],
    *,
    known_skus: set[str],
    stored: Mapping[str, Held | None],
    now: datetime,
) -> list[Outcome]:
    """Each request's outcome, in order, against the figures of ``batches``.

    ``reqs``: the batch in arrival order, a request that failed its checks as its error.
    ``stored``: order ids that already had a reservation when the batch inserted its
    own (None: it was there and is gone now, a rival's retry in flight).
    """
    by_sku: dict[str, list[BatchStock]] = {}
    for b in batches:
        by_sku.setdefault(b.sku, []).append(b)
    made: dict[str, int] = {}  # order id -> the request of this batch that holds it
    out: list[Outcome] = []
    for i, req in enumerate(reqs):
        if isinstance(req, DomainError):
            out.append(req)
            continue
        if req.order_id in stored:
            held = stored[req.order_id]
            if held is None:
                out.append(
                    TryAgain(f"order {req.order_id} is being reserved concurrently; try again")
                )
            elif not same_lines(held.lines, req.lines) or held.location != req.location:
                out.append(_other_lines(req.order_id))
            else:
                out.append(Repeat())
            continue
        if req.order_id in made:
            first = reqs[made[req.order_id]]
            assert isinstance(first, BatchRequest)
            if not same_lines(first.lines, req.lines) or first.location != req.location:
                out.append(_other_lines(req.order_id))
            else:
                out.append(Repeat(made[req.order_id]))
            continue
        unknown = sorted({li.sku for li in req.lines} - known_skus)
        if unknown:
            out.append(InvalidRequest(f"unknown sku: {', '.join(unknown)}", "body.lines"))
            continue
        candidates = [b for li in req.lines for b in by_sku.get(li.sku, ())]
        try:
            result = allocate(req.lines, candidates, now=now, location=req.location)
        except DomainError as exc:
            out.append(exc)
            continue
        taken: dict[int, int] = {}
        for la in result:
            for a in la.allocations:
                taken[a.batch_id] = taken.get(a.batch_id, 0) + a.quantity
        for sku in {li.sku for li in req.lines}:
            by_sku[sku] = [
                replace(b, figures=b.figures.apply(Delta(reserved=taken[b.id])))
                if b.id in taken
                else b
                for b in by_sku[sku]
            ]
        made[req.order_id] = i
        out.append(Fresh(tuple(result)))
    return out


def row_owners(
    reqs: Sequence[BatchRequest | DomainError], outcomes: Sequence[Outcome]
) -> dict[str, int]:
    """Order id -> the request whose content its reservation row must hold: the one
    that made it (a Fresh outcome)."""
    return {
        req.order_id: i
        for i, (req, o) in enumerate(zip(reqs, outcomes, strict=True))
        if isinstance(o, Fresh) and isinstance(req, BatchRequest)
    }
