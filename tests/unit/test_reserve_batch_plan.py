"""The in-memory plan of a coalesced batch (domain/reserve_batch.py): arrival order,
FEFO against what earlier requests left, each request's own outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stockkeeper.domain.allocation import BatchStock, OrderLine
from stockkeeper.domain.errors import Conflict, InsufficientStock, InvalidRequest
from stockkeeper.domain.quantities import Figures
from stockkeeper.domain.reserve_batch import (
    BatchRequest,
    Fresh,
    Held,
    Repeat,
    plan_batch,
    row_owners,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def req(order_id: str, *lines: tuple[str, int]) -> BatchRequest:
    return BatchRequest(
        order_id, tuple(OrderLine(s, q) for s, q in lines), None, NOW + timedelta(hours=1)
    )


def batch(bid: int, sku: str, on_hand: int, days: int | None = None) -> BatchStock:
    expires = None if days is None else NOW + timedelta(days=days)
    return BatchStock(bid, sku, "default", None, expires, Figures(on_hand=on_hand))


def test_the_earliest_request_gets_the_last_unit() -> None:
    out = plan_batch(
        [req(f"o{i}", ("S", 1)) for i in range(4)],
        [batch(1, "S", 1)],
        known_skus={"S"},
        stored={},
        now=NOW,
    )
    assert isinstance(out[0], Fresh)
    assert all(isinstance(o, InsufficientStock) for o in out[1:])


def test_fefo_against_what_earlier_requests_left() -> None:
    # Batch 2 expires first: the first order drains it, the second spills into batch 1.
    out = plan_batch(
        [req("a", ("S", 3)), req("b", ("S", 2)), req("c", ("S", 9))],
        [batch(1, "S", 5), batch(2, "S", 4, days=3)],
        known_skus={"S"},
        stored={},
        now=NOW,
    )
    a, b, c = out
    assert isinstance(a, Fresh)
    assert isinstance(b, Fresh)
    assert [(x.batch_id, x.quantity) for x in a.allocations[0].allocations] == [(2, 3)]
    assert [(x.batch_id, x.quantity) for x in b.allocations[0].allocations] == [(2, 1), (1, 1)]
    assert isinstance(c, InsufficientStock)
    assert [(s.requested, s.available) for s in c.shortages] == [(9, 4)]


def test_repeats_unknown_skus_and_copies_in_one_batch() -> None:
    reqs = [
        req("stored", ("S", 1)),
        req("stored", ("S", 2)),
        req("x", ("S", 1), ("NOPE", 1)),
        req("dup", ("S", 9)),
        req("dup", ("S", 1)),
        req("dup", ("S", 1)),
        req("dup", ("S", 2)),
    ]
    out = plan_batch(
        [*reqs, InvalidRequest("bad ttl")],
        [batch(1, "S", 3)],
        known_skus={"S"},
        stored={"stored": Held((OrderLine("S", 1),), None)},
        now=NOW,
    )
    assert out[0] == Repeat()
    assert isinstance(out[1], Conflict)
    assert isinstance(out[2], InvalidRequest)
    assert "NOPE" in str(out[2])
    assert isinstance(out[3], InsufficientStock)  # refused: the next copy is a new try
    assert isinstance(out[4], Fresh)
    assert out[5] == Repeat(4)
    assert isinstance(out[6], Conflict)
    assert isinstance(out[7], InvalidRequest)
    assert row_owners([*reqs, InvalidRequest("bad ttl")], out) == {"dup": 4}


def test_the_same_lines_in_another_order_are_a_repeat() -> None:
    # An order names a SKU once, so the order of its lines means nothing (D-423).
    out = plan_batch(
        [
            req("stored", ("T", 1), ("S", 2)),
            req("new", ("S", 1), ("T", 1)),
            req("new", ("T", 1), ("S", 1)),
            req("new", ("T", 1), ("S", 2)),
        ],
        [batch(1, "S", 5), batch(2, "T", 5)],
        known_skus={"S", "T"},
        stored={"stored": Held((OrderLine("S", 2), OrderLine("T", 1)), None)},
        now=NOW,
    )
    assert out[0] == Repeat()
    assert isinstance(out[1], Fresh)
    assert out[2] == Repeat(1)
    assert isinstance(out[3], Conflict)
