"""Every event has an ordering key, and a row that does not go out holds back the rows
behind it with the same key (D-130, D-131)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from stockkeeper.domain.events import LEVEL_CHANGED, Event, order_key, sku_key
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.envelope import ORDERING_KEY_HEADER, Envelope
from stockkeeper.store.outbox import PendingEvent
from stockkeeper.workers.dispatcher import first_unsent, held_behind, to_message


def row(id_: int, key: str) -> PendingEvent:
    return PendingEvent(
        id_, uuid.uuid4(), LEVEL_CHANGED, None, None, None, {}, datetime.now(UTC), 0, key
    )


def test_an_event_of_one_sku_is_ordered_by_its_sku() -> None:
    assert Event(LEVEL_CHANGED, {}, sku="MILK").ordering_key == sku_key("MILK") == "sku:MILK"


def test_an_event_of_an_order_is_ordered_by_its_order() -> None:
    ev = Event("inventory.released", {"order_id": "o-1"}, key=order_key("o-1"))
    assert ev.sku is None
    assert ev.ordering_key == "order:o-1"


def test_an_event_with_neither_is_ordered_by_its_type() -> None:
    assert Event("ingest.levels", {}).ordering_key == "ingest.levels"


def test_the_message_carries_the_ordering_key_in_a_header() -> None:
    """Not in the envelope, which has exactly the contract's fields (D-407)."""
    message = to_message(row(1, "order:o-1"))
    assert message.headers[ORDERING_KEY_HEADER] == "order:o-1"
    assert "key" not in orjson.loads(message.body)
    assert Envelope.parse(message.body).key is None


def test_a_stopped_row_holds_back_only_later_rows_of_its_key() -> None:
    rows = [row(1, "a"), row(2, "b"), row(3, "a"), row(4, "a"), row(5, "b"), row(6, "c")]
    assert held_behind(rows, {3}) == {4}
    assert held_behind(rows, {1, 5}) == {3, 4}
    assert held_behind(rows, set()) == set()


def test_a_batch_names_per_key_its_first_row_not_sent() -> None:
    """What the next batch in the pipeline must wait behind (D-375)."""
    rows = [row(1, "a"), row(2, "b"), row(3, "a"), row(4, "a"), row(5, "b"), row(6, "c")]
    assert first_unsent(rows, {1, 2, 3, 4, 5, 6}) == {}
    assert first_unsent(rows, {1, 2, 5, 6}) == {"a": 3}
    assert first_unsent(rows, {6}) == {"a": 1, "b": 2}
    assert first_unsent(list(reversed(rows)), {2, 6}) == {"a": 1, "b": 5}


def test_a_delay_failpoint_is_parsed_and_waits() -> None:
    points = Failpoints.from_env({"STOCKKEEPER_FAILPOINTS": "x.y=delay:1,z=kill@2"})
    assert points.points == {"x.y": "delay:1", "z": "kill@2"}
    for bad in ("x=delay", "x=delay:ms", "x=kill:5", "x=nap:1"):
        with pytest.raises(ValueError, match="action must be"):
            Failpoints.from_env({"STOCKKEEPER_FAILPOINTS": bad})


async def test_a_delay_failpoint_pauses_and_counts_its_hits() -> None:
    points = Failpoints({"x": "delay:1@2"})
    await points.pause("x")
    await points.pause("x")
    await points.pause("other")
    assert points.hits == {"x": 2}
