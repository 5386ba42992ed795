"""``Envelope.dump``, the dispatcher's fast path (D-323): byte for byte what the model
writes, and the model's own error for a field out of bounds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID  # what asyncpg hands for a uuid column

from stockkeeper.messaging.envelope import Envelope

ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("micro", [0, 5, 400_000])
@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"sku": "SKU-1", "sequence": 4, "source": "api", "key": "sku:SKU-1"},
    ],
)
def test_dump_writes_the_bytes_the_model_writes(
    zone: timezone, micro: int, fields: dict[str, Any]
) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, micro, tzinfo=zone)
    id_ = uuid.uuid4()
    payload = {"a": [1, 2.5, "é", None, {"b": True}], "big": 2**40}
    expected = Envelope.new("inventory.x", payload, occurred_at=at, id_=id_, **fields).to_bytes()
    assert Envelope.dump(id_, "inventory.x", payload, occurred_at=at, **fields) == expected
    asyncpg_id = PgUUID(str(id_))
    assert Envelope.dump(asyncpg_id, "inventory.x", payload, occurred_at=at, **fields) == expected
    assert Envelope.parse(expected).id == id_


@pytest.mark.parametrize(
    "bad",
    [
        {"type_": ""},
        {"sku": "x" * 129},
        {"sequence": 0},
        {"occurred_at": datetime(2026, 1, 2)},  # no zone
    ],
)
def test_dump_refuses_what_the_model_refuses(bad: dict[str, Any]) -> None:
    args: dict[str, Any] = {"type_": "inventory.x", "occurred_at": datetime.now(UTC), **bad}
    type_ = args.pop("type_")
    with pytest.raises(ValueError, match="validation error for Envelope"):
        Envelope.dump(uuid.uuid4(), type_, {}, **args)


CONTRACT = {"id", "type", "occurred_at", "sku", "sequence", "source", "payload"}


@pytest.mark.parametrize(
    "fields",
    [{}, {"sku": "SKU-1", "sequence": 4, "source": "api", "key": "sku:SKU-1"}],
)
def test_the_json_has_the_contracts_fields_and_no_nulls_for_unset_ones(
    fields: dict[str, Any],
) -> None:
    """ARCHITECTURE section 5: ``{id, type, occurred_at, sku?, sequence?, source?,
    payload}``; the ordering key goes in a header (D-407)."""
    at = datetime.now(UTC)
    for body in (
        Envelope.new("inventory.x", {"n": None}, occurred_at=at, **fields).to_bytes(),
        Envelope.dump(uuid.uuid4(), "inventory.x", {"n": None}, occurred_at=at, **fields),
    ):
        doc = orjson.loads(body)
        assert set(doc) <= CONTRACT
        assert set(doc) == {"id", "type", "occurred_at", "payload"} | (set(fields) - {"key"})
        assert None not in [doc[k] for k in doc if k != "payload"]
        assert doc["payload"] == {"n": None}  # the payload is kept as it is


def test_an_envelope_written_before_d407_with_its_key_and_nulls_still_parses() -> None:
    old = {
        "id": str(uuid.uuid4()),
        "type": "inventory.allocated",
        "occurred_at": "2026-01-02T03:04:05Z",
        "sku": None,
        "sequence": None,
        "source": None,
        "key": "order:o-1",
        "payload": {},
    }
    env = Envelope.parse(orjson.dumps(old))
    assert (env.key, env.sku) == ("order:o-1", None)
