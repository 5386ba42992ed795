"""The reservation answer built directly equals the one its response model builds."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from stockkeeper.api.schemas import ReservationOut, as_json, reservation_json
from stockkeeper.domain.reservation import Status
from stockkeeper.services.reservation_views import Allocation, HeldLine, ReservationView

AT = datetime(2030, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)
LINES = [
    HeldLine(
        "A",
        3,
        [Allocation(1, "LOT-1", "default", 2), Allocation(7, None, "north", 1)],
    ),
    HeldLine("B", 1, [Allocation(9, None, "default", 1)]),
]


@pytest.mark.parametrize(
    "view",
    [
        ReservationView("o-1", Status.PENDING, AT, LINES, created=True),
        ReservationView("o-2", Status.CONFIRMED, AT, LINES[:1], location="north"),
        ReservationView("o-3", Status.CANCELLED, AT, [], reason="customer changed mind"),
        ReservationView("o-4", Status.EXPIRED, AT, LINES, location="x", reason="ttl"),
    ],
)
def test_reservation_json_is_the_response_models_json(view: ReservationView) -> None:
    direct = reservation_json(view)
    assert direct == as_json(ReservationOut.of(view))
    # Byte for byte, key order included: a client sees the same body either way.
    assert orjson.dumps(direct) == orjson.dumps(as_json(ReservationOut.of(view)))
    ReservationOut.model_validate(direct)
