"""Repository for channel propagation: per channel and SKU sync state, pushes, lag."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from stockkeeper.domain.propagation import SyncState, SyncStatus, Verdict
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class Claimed:
    """A due push, leased to one sender."""

    sku: str
    version: int
    quantity: int
    # What the channel shows as far as we know; None: never told.
    previous: int | None
    channel_ref: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Acked:
    """A settled push: ``called`` False when the channel already showed the figure."""

    sku: str
    version: int
    quantity: int
    channel_ref: str | None
    called: bool = True


@dataclass(frozen=True, slots=True)
class Logged:
    sku: str
    changes: int
    called: bool
    lag_ms: float


async def lock_states(conn: Conn, sku: str, channels: Sequence[str]) -> dict[str, SyncState]:
    """One SKU's sync state per channel, locked; rows created as "never told" first for
    a SKU a channel has no row for (one round trip when they all exist)."""
    rows = await conn.fetch(q("lock_sync_rows"), sku, list(channels))
    if len(rows) < len(channels):
        await conn.execute(q("ensure_sync_rows"), list(channels), sku)
        rows = await conn.fetch(q("lock_sync_rows"), sku, list(channels))
    return {
        r["channel"]: SyncState(
            r["desired_version"],
            r["pushed_version"],
            r["pushed_quantity"],
            SyncStatus(r["status"]),
        )
        for r in rows
    }


async def apply_level(
    conn: Conn,
    sku: str,
    version: int,
    available: int,
    committed_at: datetime,
    verdicts: Mapping[str, Verdict],
    notify: str,
) -> None:
    """Record level ``version`` for each channel with its (non-stale) verdict; if a push
    became due, NOTIFY ``notify`` (delivered at commit)."""
    if not verdicts:
        return
    channels = sorted(verdicts)
    await conn.execute(
        q("apply_level"),
        sku,
        version,
        available,
        committed_at,
        channels,
        [verdicts[c].value for c in channels],
        notify,
    )


async def claim(conn: Conn, channel: str, limit: int, lease_s: float) -> list[Claimed]:
    rows = await conn.fetch(q("claim_pushes"), channel, limit, lease_s)
    return [
        Claimed(
            r["sku"],
            r["desired_version"],
            r["desired_quantity"],
            r["pushed_quantity"],
            r["channel_ref"],
            r["attempts"],
        )
        for r in rows
    ]


async def ack(conn: Conn, channel: str, items: Sequence[Acked]) -> list[Logged]:
    if not items:
        return []
    rows = await conn.fetch(
        q("ack_pushes"),
        channel,
        [i.sku for i in items],
        [i.version for i in items],
        [i.quantity for i in items],
        [i.channel_ref for i in items],
        [i.called for i in items],
    )
    return [Logged(r["sku"], r["changes"], r["called"], r["lag_ms"]) for r in rows]


async def retry(conn: Conn, channel: str, delays: Sequence[tuple[str, float]], error: str) -> None:
    await conn.execute(
        q("retry_pushes"),
        channel,
        [sku for sku, _ in delays],
        [delay for _, delay in delays],
        error[:2000],
    )


async def dead(conn: Conn, channel: str, skus: Sequence[str], error: str) -> None:
    await conn.execute(q("dead_pushes"), channel, list(skus), error[:2000])


async def unlisted(conn: Conn, channel: str, skus: Sequence[str]) -> None:
    await conn.execute(q("unlisted_pushes"), channel, list(skus))


async def rearm(conn: Conn, channel: str, skus: Sequence[str]) -> int:
    status: str = await conn.execute(q("rearm_pushes"), channel, list(skus))
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True, slots=True)
class Lag:
    samples: int
    p50_ms: float | None
    p99_ms: float | None


async def lag(conn: Conn, channels: Sequence[str], window_s: int) -> dict[str, Lag]:
    rows = await conn.fetch(q("channel_lag"), list(channels), window_s)
    return {r["channel"]: Lag(r["samples"], r["p50_ms"], r["p99_ms"]) for r in rows}
