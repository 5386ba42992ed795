"""The topology is ARCHITECTURE section 5's table: what each routing key reaches."""

from __future__ import annotations

import pytest

from stockkeeper.messaging.topology import (
    EXCHANGES,
    INVENTORY_EVENTS,
    INVENTORY_INGEST,
    ORDERS_SAGA,
    QUEUES,
    WMS_COMMANDS,
    exchange_for,
    queues_for,
)

# routing key -> the queues the table binds it to (plus, for an order's reservation
# events, orders.saga: the saga follows what happened to its reservation elsewhere).
TABLE = {
    (INVENTORY_EVENTS, "inventory.allocated"): {"wms.outbound"},
    (INVENTORY_EVENTS, "inventory.released"): {"wms.outbound", "orders.saga"},
    (INVENTORY_EVENTS, "inventory.confirmed"): {"wms.outbound"},
    (INVENTORY_EVENTS, "inventory.expired"): {"wms.outbound", "orders.saga"},
    (INVENTORY_EVENTS, "inventory.fulfilled"): {"orders.saga"},
    (INVENTORY_EVENTS, "inventory.received"): set(),
    (INVENTORY_EVENTS, "inventory.adjusted"): set(),
    (INVENTORY_EVENTS, "inventory.level_changed"): {"channel.propagation"},
    (INVENTORY_EVENTS, "inventory.levels_changed"): {"channel.propagation"},  # D-220
    (INVENTORY_EVENTS, "inventory.shortfall"): set(),
    (WMS_COMMANDS, "wms.sync.force"): {"wms.sync"},
    (WMS_COMMANDS, "wms.sync.scheduled"): {"wms.sync"},
    (INVENTORY_INGEST, "ingest.erp-main"): {"inventory.ingest"},
    (INVENTORY_INGEST, "ingest.shopify"): {"inventory.ingest"},
    (ORDERS_SAGA, "order.placed"): {"orders.saga"},
    (ORDERS_SAGA, "order.payment_succeeded"): {"orders.saga"},
}


def test_the_exchanges_and_queues_are_the_tables() -> None:
    assert set(EXCHANGES) >= {INVENTORY_EVENTS, WMS_COMMANDS, INVENTORY_INGEST, ORDERS_SAGA}
    assert {q.name for q in QUEUES} == {
        "wms.outbound",
        "channel.propagation",
        "wms.sync",
        "inventory.ingest",
        "orders.saga",
    }


@pytest.mark.parametrize(("exchange", "key"), sorted(TABLE))
def test_each_routing_key_reaches_the_queues_of_the_table(exchange: str, key: str) -> None:
    assert exchange_for(key) == exchange
    assert set(queues_for(exchange, key)) == TABLE[(exchange, key)]


def test_the_wms_commands_are_bound_by_name() -> None:
    """The table lists the two commands: nothing else on wms.commands reaches wms.sync."""
    (spec,) = [q for q in QUEUES if q.name == "wms.sync"]
    assert sorted(b.pattern for b in spec.bindings) == ["wms.sync.force", "wms.sync.scheduled"]
    assert queues_for(WMS_COMMANDS, "wms.sync.other") == []
