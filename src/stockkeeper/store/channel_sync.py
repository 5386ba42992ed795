"""Repository for channel propagation: per channel and SKU sync state (``channel_sync_state``),
the push log (``channel_push``), and per channel lag, alert and drift repair state
(``channel_state``). Every statement of the propagation use cases runs from here; the
SQL is in ``queries/channel_sync.sql``. Functions run on the caller's connection and
never open a transaction of their own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from stockkeeper.domain.propagation import SyncState, SyncStatus, Verdict
from stockkeeper.observability.tracing import current_traceparent
from stockkeeper.store.pool import Conn, Row
from stockkeeper.store.sql import q, rows_param


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
    # The claim's fencing token (claim_seq): every statement settling this push, and
    # every write after its first try, is checked against it.
    token: int
    # The W3C traceparent of the change that made it due (tracing on), D-241.
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class Acked:
    """A settled push: ``called`` False when the channel already showed the figure."""

    sku: str
    version: int
    quantity: int
    channel_ref: str | None
    token: int
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
    return {r["channel"]: _state(r) for r in rows}


def _state(r: Row) -> SyncState:
    return SyncState(
        r["desired_version"],
        r["pushed_version"],
        r["pushed_quantity"],
        SyncStatus(r["status"]),
        r["unlisted_for_s"],
    )


async def apply_level(
    conn: Conn,
    sku: str,
    version: int,
    figures: Mapping[str, tuple[int, str | None]],
    committed_at: datetime,
    verdicts: Mapping[str, Verdict],
    notify: str,
) -> None:
    """Record level ``version`` for each channel with its (non-stale) verdict and its
    figure (quantity, and the text of the rule that produced it); if a push became due,
    NOTIFY ``notify`` (delivered at commit). :func:`apply_levels` for one SKU."""
    if verdicts:
        news = LevelNews(sku, version, verdicts, figures)
        await apply_levels(conn, [news], committed_at, notify)


@dataclass(frozen=True, slots=True)
class LevelNews:
    """One SKU's level in a bulk message: per channel its verdict and its figure (the
    quantity, and the text of the rule that produced it)."""

    sku: str
    version: int
    verdicts: Mapping[str, Verdict]
    figures: Mapping[str, tuple[int, str | None]]
    # When its change committed (the push's lag starts there) and the trace to continue;
    # None: the call's committed_at, the current span.
    committed_at: datetime | None = None
    trace_context: str | None = None


# What a channel's row for a SKU reads as before it is written: never told anything.
NEVER_TOLD = SyncState(0, 0, None, SyncStatus.SYNCED)


@dataclass(frozen=True, slots=True)
class Locked:
    """Many SKUs' sync states per channel, locked. ``missing``: the (sku, channel) rows
    that are not there yet, read as :data:`NEVER_TOLD`; :func:`apply_levels` inserts
    them."""

    states: dict[tuple[str, str], SyncState]
    missing: frozenset[tuple[str, str]]


async def lock_states_bulk(conn: Conn, skus: Sequence[str], channels: Sequence[str]) -> Locked:
    """Many SKUs' sync states per channel, the rows there locked in (sku, channel)
    order: one statement whatever the number of SKUs. A row that is not there is not
    created here: :func:`apply_levels` writes it once, holding its level (D-420)."""
    pairs = [(k, ch) for k in sorted(set(skus)) for ch in sorted(channels)]
    rows = await conn.fetch(q("lock_sync_rows_bulk"), rows_param(pairs))
    states = {(r["sku"], r["channel"]): _state(r) for r in rows}
    missing = frozenset(p for p in pairs if p not in states)
    states.update(dict.fromkeys(missing, NEVER_TOLD))
    return Locked(states, missing)


async def apply_levels(
    conn: Conn,
    news: Sequence[LevelNews],
    committed_at: datetime,
    notify: str,
    missing: frozenset[tuple[str, str]] = frozenset(),
) -> set[tuple[str, str]]:
    """Record each SKU's level for each channel with its (non-stale) verdict and figure,
    in one statement; if a push became due, NOTIFY ``notify`` (delivered at commit).
    Each news' own ``committed_at`` and ``trace_context`` when it has them. The rows in
    ``missing`` (not there when they were locked) are inserted holding their level; the
    ones another transaction inserted meanwhile are left alone and returned, to be
    locked and judged again against what that transaction wrote."""
    rows = [(n, ch, v) for n in news for ch, v in sorted(n.verdicts.items())]
    if not rows:
        return set()
    trace = current_traceparent()
    row = await conn.fetchrow(
        q("apply_levels"),
        rows_param(
            (
                n.sku,
                n.version,
                n.figures[ch][0],
                ch,
                v.value,
                n.figures[ch][1],
                n.committed_at or committed_at,
                n.trace_context or trace,
                (n.sku, ch) in missing,
            )
            for n, ch, v in rows
        ),
        notify,
    )
    assert row is not None
    written = set(zip(row["skus"], row["channels"], strict=True))
    return {(n.sku, ch) for n, ch, _ in rows if (n.sku, ch) in missing} - written


def by_sku(claimed: Sequence[Claimed]) -> list[Claimed]:
    """Pushes in SKU order: the statements settling them lock their rows in the order
    they are given, and a consumer's batch locks in (sku, channel) order (D-322), so
    neither waits for the other in a cycle."""
    return sorted(claimed, key=lambda c: c.sku)


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
            r["claim_seq"],
            r["trace_context"],
        )
        for r in rows
    ]


async def count_due(conn: Conn, channel: str, limit: int) -> int:
    """The channel's due pushes, counted up to ``limit``."""
    n: int = await conn.fetchval(q("count_due"), channel, limit)
    return n


async def hold(conn: Conn, channel: str, claimed: Sequence[Claimed], lease_s: float) -> set[str]:
    """The SKUs of ``claimed`` still held by their claim's token, leases renewed."""
    claimed = by_sku(claimed)
    rows = await conn.fetch(
        q("hold_pushes"),
        channel,
        [c.sku for c in claimed],
        [c.token for c in claimed],
        lease_s,
    )
    return {r["sku"] for r in rows}


async def release(conn: Conn, channel: str, claimed: Sequence[Claimed]) -> None:
    """Let go of unfinished pushes (stopping): due again, their attempt given back."""
    claimed = by_sku(claimed)
    await conn.execute(
        q("release_pushes"), channel, [c.sku for c in claimed], [c.token for c in claimed]
    )


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
        [i.token for i in items],
    )
    return [Logged(r["sku"], r["changes"], r["called"], r["lag_ms"]) for r in rows]


async def retry(
    conn: Conn, channel: str, delays: Sequence[tuple[Claimed, float]], error: str
) -> None:
    delays = sorted(delays, key=lambda d: d[0].sku)
    await conn.execute(
        q("retry_pushes"),
        channel,
        [c.sku for c, _ in delays],
        [delay for _, delay in delays],
        error[:2000],
        [c.token for c, _ in delays],
    )


async def dead(conn: Conn, channel: str, claimed: Sequence[Claimed], error: str) -> list[str]:
    """Mark the claimed pushes DEAD; the SKUs whose claim was still held (in SKU order)."""
    claimed = by_sku(claimed)
    rows = await conn.fetch(
        q("dead_pushes"),
        channel,
        [c.sku for c in claimed],
        [c.token for c in claimed],
        error[:2000],
    )
    return sorted(r["sku"] for r in rows)


async def unlisted(conn: Conn, channel: str, claimed: Sequence[Claimed]) -> None:
    claimed = by_sku(claimed)
    await conn.execute(
        q("unlisted_pushes"), channel, [c.sku for c in claimed], [c.token for c in claimed]
    )


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


async def notify_senders(conn: Conn, notify: str) -> None:
    """Wake the senders listening on ``notify`` (delivered at the caller's commit)."""
    await conn.execute("SELECT pg_notify($1, '')", notify)


# -- per channel state: the lag alert and the drift repair schedule ----------------------


@dataclass(frozen=True, slots=True)
class ChannelState:
    channel: str
    alerting: bool
    last_reconciled_at: datetime | None
    drift_repaired: int
    last_sampled_at: datetime | None
    divergence_found: int


@dataclass(frozen=True, slots=True)
class Counts:
    """A channel's sync rows by status, and the age of its oldest due push."""

    pending: int
    synced: int
    unlisted: int
    dead: int
    oldest_pending_s: float | None


@dataclass(frozen=True, slots=True)
class Totals:
    """Acknowledged pushes in the window, and the changes they carried."""

    pushes: int
    changes: int


async def ensure_channel_states(conn: Conn, channels: Sequence[str]) -> None:
    await conn.execute(q("ensure_channel_states"), list(channels))


async def lock_alerting(conn: Conn, channel: str) -> bool:
    """Whether the channel's lag alert is on, its row locked until the caller commits
    (so one replica decides per channel). The row must exist."""
    row = await conn.fetchrow(q("lock_channel_state"), channel)
    if row is None:
        raise LookupError(f"no channel_state row for {channel!r}")
    alerting: bool = row["alerting"]
    return alerting


async def set_lag(
    conn: Conn, channel: str, alerting: bool, p50_ms: float | None, p99_ms: float | None
) -> None:
    await conn.execute(q("set_channel_lag"), channel, alerting, p50_ms, p99_ms)


async def channel_states(conn: Conn, channels: Sequence[str]) -> dict[str, ChannelState]:
    rows = await conn.fetch(q("channel_states"), list(channels))
    return {
        r["channel"]: ChannelState(
            r["channel"],
            r["alerting"],
            r["last_reconciled_at"],
            r["drift_repaired"],
            r["last_sampled_at"],
            r["divergence_found"],
        )
        for r in rows
    }


async def counts(conn: Conn, channels: Sequence[str]) -> dict[str, Counts]:
    rows = await conn.fetch(q("channel_counts"), list(channels))
    return {
        r["channel"]: Counts(
            r["pending"], r["synced"], r["unlisted"], r["dead"], r["oldest_pending_s"]
        )
        for r in rows
    }


async def push_totals(conn: Conn, channels: Sequence[str], window_s: int) -> dict[str, Totals]:
    rows = await conn.fetch(q("channel_push_totals"), list(channels), window_s)
    return {r["channel"]: Totals(r["pushes"], r["changes"]) for r in rows}
