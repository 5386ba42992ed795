"""The WMS rules: what a snapshot changes, and what the WMS is told about orders.

Pure: the sync and outbound workers feed these with rows and events and write what
they return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from stockkeeper.domain.events import ALLOCATED, CONFIRMED, EXPIRED, RELEASED
from stockkeeper.domain.ids import printable
from stockkeeper.domain.quantities import MAX_QUANTITY, Delta, Figures

# The identifiers our schema accepts (sku, location code, lot number).
LOCATION_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_SKU_LENGTH = 128
MAX_LOT_LENGTH = 128


class SyncKind(StrEnum):
    BATCH = "batch"  # one batch, forced
    SKU = "sku"  # every batch of one SKU, forced
    FULL = "full"  # every batch the WMS has, forced
    INCREMENTAL = "incremental"  # what changed since the last token, scheduled


class SyncStatus(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"
    FAILED = "FAILED"


PRIORITIES = {"low": 0, "normal": 1, "high": 2}


def sync_kind(sku: str | None, batch_id: int | None) -> SyncKind:
    """What an operator's force-sync request asks for."""
    if batch_id is not None:
        return SyncKind.BATCH
    return SyncKind.SKU if sku is not None else SyncKind.FULL


@dataclass(frozen=True, slots=True)
class Counted:
    """One batch as the WMS counts it."""

    sku: str
    location: str
    lot_number: str | None
    expires_at: datetime | None
    on_hand: int
    unavailable: int
    counted_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.sku, self.location, self.lot_number or "")


def identity_problem(row: Counted) -> str | None:
    """Why we cannot book this row (an identifier or a figure we refuse), or None."""
    if not 1 <= len(row.sku) <= MAX_SKU_LENGTH:
        return f"sku must be 1 to {MAX_SKU_LENGTH} characters"
    if refused := _not_an_id(row.sku):  # the one id rule, as at every other door (D-473)
        return f"sku {row.sku!r} {refused}"
    if not LOCATION_CODE.match(row.location):
        return f"location {row.location!r} is not a valid location code"
    if row.lot_number is not None:
        if not 1 <= len(row.lot_number) <= MAX_LOT_LENGTH:
            return f"lot_number must be 1 to {MAX_LOT_LENGTH} characters"
        if refused := _not_an_id(row.lot_number):
            return f"lot_number {row.lot_number!r} {refused}"
    for name in ("on_hand", "unavailable"):
        value = getattr(row, name)
        if not 0 <= value <= MAX_QUANTITY:
            return f"{name} {value} is outside 0..{MAX_QUANTITY}"
    return None


def _not_an_id(value: str) -> str | None:
    """What the id rule refuses in ``value`` (a dot-segment, surrounding whitespace, an
    invisible or control character), or None."""
    try:
        printable(value)
    except ValueError as exc:
        return str(exc)
    return None


def latest_per_batch(rows: list[Counted]) -> list[Counted]:
    """One row per batch (the last one given wins), in a fixed order."""
    by_key = {r.key: r for r in rows}
    return [by_key[k] for k in sorted(by_key)]


def reconcile(ours: Figures, theirs: Counted) -> Delta:
    """The adjustment that makes our batch say what the WMS counted.

    Only what the WMS knows moves: on_hand and unavailable. Reserved and committed are
    our promises; if the count is below them the batch is in shortfall (available 0),
    and the promises stay. A count is the batch's whole physical truth, so units
    oversold on it are settled by it (D-120). A sync page applies this rule in SQL over
    the whole page (``store/queries/wms.sql: reconcile_counts``, D-340).
    """
    return Delta(
        on_hand=theirs.on_hand - ours.on_hand,
        unavailable=theirs.unavailable - ours.unavailable,
        oversold=-ours.oversold,
    )


class OutboundAction(StrEnum):
    ALLOCATE = "allocate"
    RELEASE = "release"
    CONFIRM = "confirm"


ACTION_FOR_EVENT = {
    ALLOCATED: OutboundAction.ALLOCATE,
    RELEASED: OutboundAction.RELEASE,
    EXPIRED: OutboundAction.RELEASE,
    CONFIRMED: OutboundAction.CONFIRM,
}


@dataclass(frozen=True, slots=True)
class OutboundLine:
    """One thing to tell the WMS about one batch of one order."""

    event_id: str
    action: OutboundAction
    order_id: str
    sku: str
    batch_id: int
    quantity: int


def outbound_lines(message_id: str, event_type: str, payload: dict[str, Any]) -> list[OutboundLine]:
    """The WMS lines of one reservation event; the same event always gives the same ids.

    Lines of the same batch are merged, so the WMS's event id (message and batch) is
    unique within the event.
    """
    action = ACTION_FOR_EVENT.get(event_type)
    if action is None:
        return []
    order_id = str(payload["order_id"])
    merged: dict[tuple[str, int], int] = {}
    for line in payload["lines"]:
        key = (str(line["sku"]), int(line["batch_id"]))
        merged[key] = merged.get(key, 0) + int(line["quantity"])
    return [
        OutboundLine(f"{message_id}:{batch_id}", action, order_id, sku, batch_id, qty)
        for (sku, batch_id), qty in sorted(merged.items(), key=lambda kv: kv[0][1])
        if qty > 0
    ]


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """How far a sync request has got: a percentage and an ETA when the WMS gave the
    snapshot's total, else both None (an incremental sync has no total)."""

    total: int | None
    percent: float | None
    eta_seconds: float | None


def sync_progress(
    status: str,
    rows_seen: int,
    total: int | None,
    started_at: datetime | None,
    finished_at: datetime | None,
    now: datetime,
) -> SyncProgress:
    """Percent of ``total`` seen, and the seconds left at the average rate so far.

    DONE is 100 % with no time left whatever the counts say (the WMS's total is its
    count when the first page was read; rows may come and go while we page)."""
    if status == "DONE":
        return SyncProgress(total, 100.0 if total is not None else None, 0.0)
    if total is None:
        return SyncProgress(None, None, None)
    if total == 0:
        return SyncProgress(0, 100.0, 0.0)
    seen = min(rows_seen, total)
    percent = round(100 * seen / total, 1)
    if status != "IN_PROGRESS" or started_at is None or seen == 0 or finished_at is not None:
        return SyncProgress(total, percent, None)
    elapsed = (now - started_at).total_seconds()
    if elapsed <= 0:
        return SyncProgress(total, percent, None)
    return SyncProgress(total, percent, round((total - seen) * elapsed / seen, 1))
