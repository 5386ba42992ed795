"""store/errors.py: driver errors leave the repositories as the store's own."""

from __future__ import annotations

import asyncpg
import pytest

from stockkeeper.domain.quantities import Delta
from stockkeeper.store import stock
from stockkeeper.store.errors import (
    CheckViolated,
    StoreError,
    StoreUnavailable,
    UniqueViolated,
    WouldGoNegative,
    cannot_connect,
    is_unavailable,
    translate,
)
from stockkeeper.store.stock import Movement


async def test_a_figure_below_zero_is_would_go_negative_with_the_driver_error_as_cause(
    db_url: str,
) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await stock.ensure_sku(conn, "A")
            await stock.ensure_location(conn, "default")
            batch_id, _ = await stock.upsert_batch(conn, "A", "default", None, None)
        with pytest.raises(WouldGoNegative) as err:
            await stock.apply_movements(conn, [Movement(batch_id, "A", Delta(on_hand=-1))])
        assert err.value.constraint == "sku_batch_on_hand_check"
        assert isinstance(err.value.__cause__, asyncpg.CheckViolationError)
    finally:
        await conn.close()


async def test_other_checks_and_keys_keep_their_constraint_name(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError) as check:
            await conn.execute("INSERT INTO sku (sku) VALUES ('')")
        mine = translate(check.value)
        assert type(mine) is CheckViolated
        assert mine.constraint == "sku_sku_check"
        await conn.execute("INSERT INTO sku (sku) VALUES ('A')")
        with pytest.raises(asyncpg.UniqueViolationError) as dup:
            await conn.execute("INSERT INTO sku (sku) VALUES ('A')")
        mine = translate(dup.value)
        assert isinstance(mine, UniqueViolated)
        assert mine.constraint == "sku_pkey"
    finally:
        await conn.close()


async def test_a_closed_connection_is_store_unavailable(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    await conn.close()
    with pytest.raises(StoreUnavailable):
        await stock.known_skus(conn, ["A"])


def test_errors_that_are_not_the_drivers_pass_through() -> None:
    assert translate(ValueError("x")) is None
    assert translate(TimeoutError()) is None
    already = StoreError("x")
    assert translate(already) is already


# What asyncpg raises when a connection whose server went away mid-statement is used
# again before the socket's close is read (state 2: still consuming that error).
LOST_MID_OPERATION = "cannot switch to state 12; another operation (2) is in progress"


def test_a_connection_lost_mid_operation_is_unavailable_not_a_failure() -> None:
    lost = asyncpg.InternalClientError(LOST_MID_OPERATION)
    assert is_unavailable(lost)
    assert cannot_connect(lost)
    assert isinstance(translate(lost), StoreUnavailable)
    wrapped = RuntimeError("ack failed")
    wrapped.__cause__ = lost
    assert is_unavailable(wrapped)
    # Any other client-side error is a bug to see, never an outage to wait out.
    other = asyncpg.InternalClientError("got result for unknown protocol state 0")
    assert not is_unavailable(other)
    assert translate(other) is None


async def test_a_repository_call_on_a_connection_lost_mid_operation_is_store_unavailable(
    db_url: str,
) -> None:
    class LostMidOperation(asyncpg.Connection):  # the driver's state, as it raises it
        async def _do_execute(self, *args: object, **kwargs: object) -> object:
            raise asyncpg.InternalClientError(LOST_MID_OPERATION)

    conn = await asyncpg.connect(db_url, connection_class=LostMidOperation)
    try:
        with pytest.raises(StoreUnavailable) as err:
            await stock.known_skus(conn, ["A"])
        assert isinstance(err.value.__cause__, asyncpg.InternalClientError)
    finally:
        await conn.close()
