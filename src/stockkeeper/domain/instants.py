"""The times stockkeeper takes from outside: aware, and within what it can store.

PostgreSQL's ``timestamptz`` and Python's ``datetime`` both end at year 9999 (UTC, for
the database once the offset is applied), and asyncpg writes ``datetime.min`` and
``datetime.max`` as ``-infinity`` and ``infinity``. A time such as
``9999-12-31T23:59:59-14:00`` is a valid ISO 8601 string and a valid Python value, but no
statement can take it, and ``0001-01-01T00:00:00Z`` comes back as another value. So a
time from an HTTP body, a cursor, a source row or a WMS row is checked against one range
here, where a clear refusal can still be given (D-481).
"""

from __future__ import annotations

from datetime import UTC, datetime

# A day clear of either end. Old dates stay valid: legacy ERPs use 1900-01-01 as "never".
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)  # exclusive
RANGE_TEXT = "from 0001-01-02T00:00:00Z to before 9999-12-31T00:00:00Z"


def in_range(value: datetime) -> datetime:
    """``value`` as it was, if it is aware and in the range; else ValueError."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a time needs a UTC offset (Z or +hh:mm)")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"a time must be {RANGE_TEXT}") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"a time must be {RANGE_TEXT}")
    return value
