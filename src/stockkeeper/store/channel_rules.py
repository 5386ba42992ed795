"""Repository for per-channel availability rules (``channel_rule``), their change log
(``channel_rule_change``), the per-location figures rules are computed from, and the
re-figuring of a channel's SKUs after a rule change or for a resync. SQL in
``queries/channel_rules.sql``; every function runs on the caller's connection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from stockkeeper.domain.availability import AvailabilityRule, RuleOverride
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q

CHANNEL_ROW = ""  # the sku of a channel's own rule row


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A stored rule row: the channel's (``sku`` '') or a SKU's override."""

    channel: str
    sku: str
    locations: list[str] | None
    buffer: int | None
    cap: int | None
    share_percent: int | None
    clear_cap: bool

    def as_rule(self) -> AvailabilityRule:
        return AvailabilityRule(
            None if self.locations is None else frozenset(self.locations),
            self.buffer or 0,
            self.cap,
            100 if self.share_percent is None else self.share_percent,
        )

    def as_override(self) -> RuleOverride:
        return RuleOverride(
            None if self.locations is None else frozenset(self.locations),
            self.buffer,
            self.cap,
            self.share_percent,
            self.clear_cap,
        )

    def wire(self) -> dict[str, Any]:
        """The row as JSON for the change log."""
        return {
            "locations": self.locations,
            "buffer": self.buffer,
            "cap": self.cap,
            "share_percent": self.share_percent,
            "clear_cap": self.clear_cap,
        }


@dataclass(frozen=True, slots=True)
class RuleChange:
    id: int
    channel: str
    sku: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    changed_by: str
    changed_at: datetime
    repushed: int


@dataclass(frozen=True, slots=True)
class SkuState:
    """One channel's sync row for one SKU: what it is to be shown, by which rule, and
    what it was last told."""

    channel: str
    sku: str
    status: str
    desired_version: int
    desired_quantity: int
    desired_rule: str | None
    pushed_version: int
    pushed_quantity: int | None
    pushed_at: datetime | None
    attempts: int
    last_error: str | None
    channel_ref: str | None
    pending_since: datetime | None
    updated_at: datetime


def _stored(r: asyncpg.Record) -> StoredRule:
    return StoredRule(
        r["channel"],
        r["sku"],
        None if r["locations"] is None else list(r["locations"]),
        r["buffer"],
        r["cap"],
        r["share_percent"],
        r["clear_cap"],
    )


@translated
async def rules_for_sku(conn: Conn, channels: Sequence[str], sku: str) -> list[StoredRule]:
    return [_stored(r) for r in await conn.fetch(q("rules_for_sku"), list(channels), sku)]


@translated
async def rules_for_skus(
    conn: Conn, channels: Sequence[str], skus: Sequence[str]
) -> list[StoredRule]:
    return [_stored(r) for r in await conn.fetch(q("rules_for_skus"), list(channels), list(skus))]


@translated
async def rules_of_channel(conn: Conn, channel: str) -> list[StoredRule]:
    return [_stored(r) for r in await conn.fetch(q("rules_of_channel"), channel)]


@translated
async def lock_rule(conn: Conn, channel: str, sku: str) -> StoredRule | None:
    r = await conn.fetchrow(q("lock_rule"), channel, sku)
    return None if r is None else _stored(r)


@translated
async def put_rule(conn: Conn, rule: StoredRule, by: str) -> None:
    await conn.execute(
        q("put_rule"),
        rule.channel,
        rule.sku,
        rule.locations,
        rule.buffer,
        rule.cap,
        rule.share_percent,
        rule.clear_cap,
        by,
    )


@translated
async def delete_rule(conn: Conn, channel: str, sku: str) -> None:
    await conn.execute(q("delete_rule"), channel, sku)


def _json(doc: dict[str, Any] | None) -> str | None:
    return None if doc is None else orjson.dumps(doc).decode()


@translated
async def log_change(
    conn: Conn,
    channel: str,
    sku: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    by: str,
    repushed: int,
) -> None:
    await conn.execute(
        q("log_rule_change"), channel, sku, _json(before), _json(after), by, repushed
    )


@translated
async def changes(conn: Conn, channel: str, after: int, limit: int) -> list[RuleChange]:
    rows = await conn.fetch(q("rule_changes"), channel, after, limit)
    return [
        RuleChange(
            r["id"],
            r["channel"],
            r["sku"],
            None if r["before"] is None else orjson.loads(r["before"]),
            None if r["after"] is None else orjson.loads(r["after"]),
            r["changed_by"],
            r["changed_at"],
            r["repushed"],
        )
        for r in rows
    ]


@translated
async def available_by_location(
    conn: Conn, skus: Sequence[str], now: datetime
) -> dict[str, dict[str, int]]:
    """Per SKU, what each of its locations has available (expired lots: nothing)."""
    out: dict[str, dict[str, int]] = {sku: {} for sku in skus}
    for r in await conn.fetch(q("available_by_location"), list(skus), now):
        out[r["sku"]][r["location"]] = r["available"]
    return out


@translated
async def sku_page(conn: Conn, after: str, limit: int) -> list[str]:
    return [r["sku"] for r in await conn.fetch(q("sku_page"), after, limit)]


@translated
async def rule_stale_page(conn: Conn, channel: str, rule: str, after: str, limit: int) -> list[str]:
    """The channel's SKUs after ``after`` whose figure was made under a rule other than
    ``rule`` (its text)."""
    rows = await conn.fetch(q("rule_stale_page"), channel, rule, after, limit)
    return [r["sku"] for r in rows]


@dataclass(frozen=True, slots=True)
class Figure:
    sku: str
    quantity: int
    rule: str
    version: int


@translated
async def refigure(
    conn: Conn,
    channel: str,
    figures: Sequence[Figure],
    force: bool,
    moved: Sequence[str] = (),
) -> int:
    """Store new figures for the channel's SKUs; how many became (or stay) due.
    ``moved``: SKUs whose figure at some location of the channel changed though their
    sum did not, due as if their figure had changed (D-445)."""
    if not figures:
        return 0
    rows = await conn.fetch(
        q("refigure"),
        channel,
        [f.sku for f in figures],
        [f.quantity for f in figures],
        [f.rule for f in figures],
        [f.version for f in figures],
        force,
        list(moved),
    )
    return len(rows)


@translated
async def sku_state(conn: Conn, channel: str, sku: str) -> SkuState | None:
    r = await conn.fetchrow(q("sku_state"), channel, sku)
    return None if r is None else SkuState(**dict(r))


@translated
async def due_count(conn: Conn, channel: str, skus: Sequence[str] | None) -> int:
    n = await conn.fetchval(q("due_count"), channel, None if skus is None else list(skus))
    return int(n or 0)
