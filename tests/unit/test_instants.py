"""Times from outside are checked against what the database can store (D-481): at the
HTTP edge (tests/integration/test_http_edge.py) and in the rows of a source or a WMS,
where a bad time sets its row aside and the rest of the page passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from stockkeeper.connectors.records import parse_levels
from stockkeeper.connectors.wms import _rows
from stockkeeper.domain.instants import in_range

EAST = timezone(timedelta(hours=14))
WEST = timezone(timedelta(hours=-14))


@pytest.mark.parametrize(
    "when",
    [
        datetime(9999, 12, 31, 23, 0, tzinfo=WEST),  # past 9999 once in UTC
        datetime(1, 1, 1, 5, 0, tzinfo=EAST),  # before year 1 once in UTC
        datetime(1, 1, 1, tzinfo=UTC),  # asyncpg's -infinity
        datetime.max.replace(tzinfo=UTC),  # asyncpg's infinity
    ],
)
def test_a_time_the_database_cannot_store_is_refused(when: datetime) -> None:
    with pytest.raises(ValueError, match="0001-01-02T00:00:00Z"):
        in_range(when)


def test_an_old_or_far_time_that_fits_is_kept_as_sent() -> None:
    legacy = datetime(1900, 1, 1, tzinfo=EAST)
    assert in_range(legacy) is legacy
    far = datetime(9999, 12, 30, tzinfo=UTC)
    assert in_range(far) is far
    with pytest.raises(ValueError, match="offset"):
        in_range(datetime(2030, 1, 1))


def test_a_source_row_with_such_a_time_is_refused_alone() -> None:
    raw = [
        {"sku": "A", "on_hand": 1, "source_updated_at": "2030-01-01T00:00:00Z"},
        {"sku": "B", "on_hand": 1, "source_updated_at": "9999-12-31T23:59:59-14:00"},
        {"sku": "C", "on_hand": 1, "source_updated_at": "1900-01-01T00:00:00Z"},
    ]
    good, bad = parse_levels(raw)
    assert [r.sku for r in good] == ["A", "C"]
    (refused,) = bad
    assert refused.raw["sku"] == "B"
    assert "source_updated_at" in refused.error


def test_a_wms_row_with_such_a_time_is_set_aside_alone() -> None:
    raw = [
        {"sku": "A", "on_hand": 1, "updated_at": "2030-01-01T00:00:00"},
        {"sku": "B", "on_hand": 1, "expires_at": "0001-01-01T00:00:00Z"},
        {"sku": "C", "on_hand": 1, "updated_at": "9999-12-31T23:59:59-14:00"},
    ]
    items, rejected = _rows(raw)
    assert [r.sku for r in items] == ["A"]
    assert items[0].updated_at == datetime(2030, 1, 1, tzinfo=UTC)  # no offset: UTC
    assert [(r.position, r.raw["sku"]) for r in rejected] == [(1, "B"), (2, "C")]
    assert "expires_at" in rejected[0].error
    assert "updated_at" in rejected[1].error
