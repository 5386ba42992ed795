"""Retention: one bounded batch of old rows deleted from an append-heavy table.

Each call is one DELETE of at most ``limit`` rows, run outside any caller transaction
(autocommit), so its row locks last one short statement. The inventory ledger is not
here on purpose: it is kept forever, the history every stock figure is summed from; nor
are the tables that apply a sale, a receipt or an adjustment once (``ingested_sale``,
``applied_reference``), nor orders and reservations (D-463).
"""

from __future__ import annotations

from enum import StrEnum

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


class Pruned(StrEnum):
    """The tables retention prunes; the value is the table's name."""

    SENT_EVENTS = "domain_event"
    PROCESSED_MESSAGES = "processed_message"
    CONSUMER_POSITIONS = "consumer_position"
    IDEMPOTENCY_KEYS = "idempotency_key"
    WMS_CALLS = "wms_call"
    CHANNEL_PUSHES = "channel_push"
    WEBHOOK_DELIVERIES = "webhook_delivery"
    RESOLVED_DEAD_LETTERS = "dead_letter"
    SENT_WMS_ITEMS = "wms_outbound_item"
    FINISHED_WMS_SYNCS = "wms_sync_request"


_QUERY = {
    Pruned.SENT_EVENTS: "prune_sent_events",
    Pruned.PROCESSED_MESSAGES: "prune_processed_messages",
    Pruned.CONSUMER_POSITIONS: "prune_consumer_positions",
    Pruned.IDEMPOTENCY_KEYS: "prune_idempotency_keys",
    Pruned.WMS_CALLS: "prune_wms_calls",
    Pruned.CHANNEL_PUSHES: "prune_channel_pushes",
    Pruned.WEBHOOK_DELIVERIES: "prune_webhook_deliveries",
    Pruned.RESOLVED_DEAD_LETTERS: "prune_resolved_dead_letters",
    Pruned.SENT_WMS_ITEMS: "prune_sent_wms_items",
    Pruned.FINISHED_WMS_SYNCS: "prune_finished_wms_syncs",
}


def query_name(table: Pruned) -> str:
    """The named query that prunes ``table`` (for EXPLAIN in the tests)."""
    return _QUERY[table]


@translated
async def prune_batch(conn: Conn, table: Pruned, older_than_s: float, limit: int) -> int:
    """Delete up to ``limit`` rows of ``table`` older than ``older_than_s`` seconds (on
    the database's clock), oldest first; return how many went."""
    status: str = await conn.execute(q(_QUERY[table]), older_than_s, limit)
    return int(status.rsplit(" ", 1)[-1])
