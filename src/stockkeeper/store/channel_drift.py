"""Repository for reading a channel back: the scheduled drift repair's pages and marks,
the divergence sampler's walk, and the admin list of a channel's UNLISTED SKUs (the
``channel_sync_state`` and ``channel_state`` rows these touch). The SQL is in
``queries/channel_sync.sql``; functions run on the caller's connection and never open a
transaction of their own. Split from :mod:`stockkeeper.store.channel_sync`, which keeps
recording and pushing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockkeeper.domain.propagation import SyncStatus
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


async def claim_reconcile(conn: Conn, channel: str, interval_s: float) -> bool:
    """Whether this replica runs the channel's scheduled drift repair now (marked started)."""
    return await conn.fetchval(q("claim_reconcile"), channel, interval_s) is not None


async def count_drift(conn: Conn, channel: str, drifted: int) -> None:
    await conn.execute(q("count_drift"), channel, drifted)


# -- drift repair ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """A SKU of ours with what we know of it on one channel (drift repair's page)."""

    sku: str
    channel_ref: str | None
    in_flight: bool
    # The row's claim_seq when the page was read: the repair is applied only if no push
    # was claimed since.
    claim_seq: int


async def sku_count(conn: Conn) -> int:
    """Every SKU we know: what a drift repair walks."""
    n: int = await conn.fetchval(q("sku_count"))
    return n


async def reconcile_page(conn: Conn, channel: str, after: str, limit: int) -> list[Listed]:
    """The next ``limit`` SKUs after ``after`` (by name), with the channel's sync row."""
    rows = await conn.fetch(q("reconcile_page"), channel, after, limit)
    return [Listed(r["sku"], r["channel_ref"], r["in_flight"], r["claim_seq"]) for r in rows]


async def repair_drift(
    conn: Conn,
    channel: str,
    sku: str,
    shown: int | None,
    version: int,
    available: int,
    seen_seq: int,
) -> SyncStatus | None:
    """Record what the channel really shows (``shown``; None: not listed) against our
    level; the row's status after, or None when it was left alone (a push in flight, a
    newer change known, or a push claimed since the read: its claim_seq is no longer
    ``seen_seq``)."""
    status: Any = await conn.fetchval(
        q("repair_drift"), channel, sku, shown, version, available, seen_seq
    )
    return None if status is None else SyncStatus(status)


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What a channel showed for one SKU when read back, against our level then."""

    sku: str
    shown: int | None
    version: int
    available: int
    seen_seq: int


async def repair_drift_many(
    conn: Conn, channel: str, reads: Sequence[ReadBack]
) -> dict[str, SyncStatus]:
    """:func:`repair_drift` for a page of SKUs in one statement; the status after of
    each SKU not left alone."""
    if not reads:
        return {}
    rows = await conn.fetch(
        q("repair_drift_bulk"),
        channel,
        [r.sku for r in reads],
        [r.shown for r in reads],
        [r.version for r in reads],
        [r.available for r in reads],
        [r.seen_seq for r in reads],
    )
    return {r["sku"]: SyncStatus(r["status"]) for r in rows}


@dataclass(frozen=True, slots=True)
class Unlisted:
    """A SKU the channel said it does not list, and since when (None: not recorded)."""

    sku: str
    since: datetime | None


async def unlisted_page(conn: Conn, channel: str, after: str, limit: int) -> list[Unlisted]:
    """The channel's UNLISTED SKUs after ``after`` (by name), at most ``limit``."""
    rows = await conn.fetch(q("unlisted_page"), channel, after, limit)
    return [Unlisted(r["sku"], r["unlisted_at"]) for r in rows]


# -- the divergence sample -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Believed:
    """A SKU we believe the channel shows ``quantity`` of (the divergence sample's page)."""

    sku: str
    channel_ref: str | None
    quantity: int
    claim_seq: int


async def claim_sample(conn: Conn, channel: str, interval_s: float) -> str | None:
    """Where the channel's sample walk stands if this replica samples it now (marked
    started), else None."""
    after: str | None = await conn.fetchval(q("claim_sample"), channel, interval_s)
    return after


async def sample_page(conn: Conn, channel: str, after: str, limit: int) -> list[Believed]:
    rows = await conn.fetch(q("sample_page"), channel, after, limit)
    return [
        Believed(r["sku"], r["channel_ref"], r["pushed_quantity"], r["claim_seq"]) for r in rows
    ]


async def diverged(
    conn: Conn, channel: str, sku: str, shown: int | None, seen_seq: int
) -> SyncStatus | None:
    """The channel shows ``shown``, not what it acknowledged: due again (or UNLISTED);
    None when left alone (a push claimed since the read, or no longer in sync)."""
    status: Any = await conn.fetchval(q("diverged"), channel, sku, shown, seen_seq)
    return None if status is None else SyncStatus(status)


async def sampled(conn: Conn, channel: str, after: str, found: int) -> None:
    await conn.execute(q("sampled"), channel, after, found)
