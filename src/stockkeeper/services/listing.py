"""The admin lists (issue 16): what is in the system, a page at a time.

Every list is keyset-paged: a page answers ``next``, an opaque cursor to pass back as
``after`` (None on the last page), so a page costs the same at the start and at the
millionth row and rows written meanwhile never shift a page. Limits are bounded by the
API. Results are typed; api/admin_lists.py builds the HTTP shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from stockkeeper.config import (
    ChannelConfig,
    ErpConnectorConfig,
    MarketplaceConnectorConfig,
    Settings,
)
from stockkeeper.domain.errors import InvalidRequest, NotFound
from stockkeeper.domain.ids import MAX_ROW_ID
from stockkeeper.domain.instants import in_range
from stockkeeper.services.stock import LevelView
from stockkeeper.services.unit import Clock, transaction
from stockkeeper.services.wms import SyncRequest
from stockkeeper.store import listing, poll_requests
from stockkeeper.store.poll_requests import PollRequest
from stockkeeper.store.pool import Conn, Pool

T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next: str | None


@dataclass(frozen=True, slots=True)
class ReservationSummary:
    order_id: str
    status: str
    location: str | None
    lines: tuple[tuple[str, int], ...]
    expires_at: datetime
    reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class OrderSummary:
    order_id: str
    status: str
    reason: str | None
    created_at: datetime
    decided_at: datetime | None
    updated_at: datetime
    payment_due_at: datetime | None
    age_s: float


@dataclass(frozen=True, slots=True)
class ChannelSku:
    """One SKU of a channel that is not in sync: what we know and what the channel
    acknowledged (``acknowledged_version``), and the push in flight, if any."""

    sku: str
    status: str
    desired_version: int
    desired_quantity: int
    pushing_version: int | None
    acknowledged_version: int
    acknowledged_quantity: int | None
    acknowledged_at: datetime | None
    pending_since: datetime | None
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    unlisted_at: datetime | None


@dataclass(frozen=True, slots=True)
class LagPoint:
    at: datetime
    p50_ms: float
    p99_ms: float
    pushes: int


def _after_id(after: str | None) -> int:
    if not after:
        return 0
    if not after.isdigit() or len(after) > 19 or int(after) > MAX_ROW_ID:
        raise InvalidRequest(f"not a cursor of this list: {after!r}", "query.after")
    return int(after)


def _after_pair(after: str | None) -> tuple[datetime, int]:
    """A (timestamp, id) cursor, written by :func:`_pair`."""
    if not after:
        return EPOCH, 0
    at, sep, row = after.rpartition("~")
    # A cursor of before D-453 pasted into a URL unencoded: its "+00:00" came as " 00:00".
    at = at.replace(" ", "+")
    try:
        when: datetime | None = in_range(datetime.fromisoformat(at))
    except ValueError:
        when = None
    if not sep or when is None or not row.isdigit() or len(row) > 19 or int(row) > MAX_ROW_ID:
        raise InvalidRequest(f"not a cursor of this list: {after!r}", "query.after")
    return when, int(row)


def _pair(at: datetime, row_id: int) -> str:
    """``2030-01-01T00:01:00.250000Z~17``: UTC with a Z, so nothing in it needs
    percent-encoding (a "+00:00" pasted into a URL reads as a space, D-453)."""
    utc = at.astimezone(UTC).replace(tzinfo=None)
    return f"{utc.isoformat(timespec='microseconds')}Z~{row_id}"


def _page(
    rows: Sequence[Any], limit: int, of: Callable[[Any], T], cursor: Callable[[Any], str]
) -> Page[T]:
    shown = rows[:limit]
    more = len(rows) > limit
    return Page(tuple(of(r) for r in shown), cursor(shown[-1]) if more and shown else None)


class Listing:
    """The admin lists, and "poll now" for the polled connectors."""

    def __init__(self, pool: Pool, settings: Settings, clock: Clock) -> None:
        self.pool = pool
        self.settings = settings
        self.clock = clock

    async def skus(
        self,
        *,
        prefix: str = "",
        after: str | None = None,
        unavailable_only: bool = False,
        shortfall_only: bool = False,
        limit: int = 100,
    ) -> Page[LevelView]:
        """SKUs by SKU (byte order), optionally starting with ``prefix``, only those with
        nothing available, or only those short of their promises."""
        async with self.pool.acquire() as conn:
            rows = await listing.skus(
                conn,
                prefix=prefix,
                after=after or "",
                unavailable_only=unavailable_only,
                shortfall_only=shortfall_only,
                now=self.clock(),
                limit=limit + 1,
            )
        return _page(
            rows,
            limit,
            lambda r: LevelView(
                sku=r["sku"],
                on_hand=r["on_hand"],
                unavailable=r["unavailable"],
                reserved=r["reserved"],
                committed=r["committed"],
                oversold=r["oversold"],
                available=r["available"],
                shortfall=r["shortfall"],
                version=r["version"],
                updated_at=r["updated_at"],
            ),
            lambda r: str(r["sku"]),
        )

    async def reservations(
        self,
        *,
        status: str | None = None,
        sku: str | None = None,
        expiring_within_s: float | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[ReservationSummary]:
        """Reservations by id (optionally of one status, or holding one SKU); or, with
        ``expiring_within_s``, the PENDING ones due within that time, soonest first.
        Every filter narrows (D-452): with ``expiring_within_s`` the SKU still holds, and
        a status other than PENDING leaves nothing (only a PENDING one expires)."""
        async with self.pool.acquire() as conn:
            if expiring_within_s is not None:
                cursor = _after_pair(after)
                if status not in (None, "PENDING"):
                    return Page((), None)
                before = self.clock() + timedelta(seconds=expiring_within_s)
                rows = await listing.expiring_reservations(
                    conn, before=before, sku=sku, after=cursor, limit=limit + 1
                )
                return _page(rows, limit, _reservation, lambda r: _pair(r["expires_at"], r["id"]))
            rows = await listing.reservations(
                conn, status=status, sku=sku, after=_after_id(after), limit=limit + 1
            )
        return _page(rows, limit, _reservation, lambda r: str(r["id"]))

    async def orders(
        self,
        *,
        status: str | None = None,
        older_than_s: float = 0,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[OrderSummary]:
        """Orders oldest first (optionally of one status, placed at least
        ``older_than_s`` ago)."""
        now = self.clock()
        async with self.pool.acquire() as conn:
            rows = await listing.orders(
                conn,
                status=status,
                placed_before=now - timedelta(seconds=older_than_s),
                after=_after_pair(after),
                limit=limit + 1,
            )
        return _page(
            rows,
            limit,
            lambda r: OrderSummary(
                order_id=r["order_id"],
                status=r["status"],
                reason=r["reason"],
                created_at=r["created_at"],
                decided_at=r["decided_at"],
                updated_at=r["updated_at"],
                payment_due_at=r["payment_due_at"],
                age_s=max(0.0, (now - r["created_at"]).total_seconds()),
            ),
            lambda r: _pair(r["created_at"], r["id"]),
        )

    async def sync_requests(
        self, *, status: str | None = None, after: str | None = None, limit: int = 50
    ) -> Page[SyncRequest]:
        """WMS sync requests, newest first."""
        below = _after_id(after) or 2**63 - 1
        async with self.pool.acquire() as conn:
            rows = await listing.sync_requests(conn, status=status, below=below, limit=limit + 1)
        return _page(rows, limit, SyncRequest.of, lambda r: str(r["id"]))

    async def channel_skus(
        self, channel: str, *, state: str = "all", after: str | None = None, limit: int = 100
    ) -> Page[ChannelSku]:
        """A channel's SKUs not in sync (``state``: all, pending, unlisted, failing)."""
        if channel not in {c.id for c in self.settings.connectors_of(ChannelConfig)}:
            raise NotFound(f"no channel {channel}")
        async with self.pool.acquire() as conn:
            rows = await listing.channel_skus(
                conn, channel=channel, state=state, after=after or "", limit=limit + 1
            )
        return _page(
            rows,
            limit,
            lambda r: ChannelSku(
                sku=r["sku"],
                status=r["status"],
                desired_version=r["desired_version"],
                desired_quantity=r["desired_quantity"],
                pushing_version=r["claimed_version"],
                acknowledged_version=r["pushed_version"],
                acknowledged_quantity=r["pushed_quantity"],
                acknowledged_at=r["pushed_at"],
                pending_since=r["pending_since"],
                attempts=r["attempts"],
                next_attempt_at=r["next_attempt_at"],
                last_error=r["last_error"],
                unlisted_at=r["unlisted_at"],
            ),
            lambda r: str(r["sku"]),
        )

    async def lag_history(
        self, *, window_s: int = 3600, bucket_s: int = 60
    ) -> dict[str, tuple[LagPoint, ...]]:
        """Per channel, the lag p50/p99 of acknowledged pushes per ``bucket_s`` over the
        last ``window_s``: computed from the push log every replica writes."""
        since = self.clock() - timedelta(seconds=window_s)
        async with self.pool.acquire() as conn:
            rows = await listing.lag_series(conn, since=since, bucket_s=bucket_s)
        out: dict[str, list[LagPoint]] = {
            c.id: [] for c in self.settings.connectors_of(ChannelConfig)
        }
        for r in rows:
            out.setdefault(r["channel"], []).append(
                LagPoint(r["bucket"], float(r["p50_ms"]), float(r["p99_ms"]), int(r["pushes"]))
            )
        return {ch: tuple(points) for ch, points in out.items()}

    # "Poll now" ------------------------------------------------------------------------

    def polled(self) -> list[str]:
        """The connectors a poller reads: ERPs and marketplaces."""
        return [
            c.id
            for c in self.settings.connectors
            if isinstance(c, ErpConnectorConfig | MarketplaceConnectorConfig)
        ]

    async def request_poll(
        self, connector: str, requested_by: str, conn: Conn | None = None
    ) -> PollRequest:
        """Ask the poller of ``connector`` (on whichever replica holds it) to poll at
        once; while a request is pending, the same request. On ``conn`` when given (the
        Idempotency-Key's transaction), else in a transaction of its own."""
        if connector not in self.polled():
            raise NotFound(f"no polled connector {connector}")
        async with transaction(self.pool, conn) as own:
            return await poll_requests.request(own, connector, requested_by)

    async def pending_polls(self) -> dict[str, PollRequest]:
        async with self.pool.acquire() as conn:
            return {p.connector: p for p in await poll_requests.pending(conn)}


def _reservation(r: Any) -> ReservationSummary:
    lines = r["lines"]
    return ReservationSummary(
        order_id=r["order_id"],
        status=r["status"],
        location=r["location"],
        lines=tuple((str(x["sku"]), int(x["quantity"])) for x in lines),
        expires_at=r["expires_at"],
        reason=r["reason"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )
