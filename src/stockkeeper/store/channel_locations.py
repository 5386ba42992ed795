"""Repository for channels with several locations (Shopify locations, D-280): per
channel, SKU and location of the channel, the figure we last sent there and what it
shows (``channel_location_state``), and the drift repair that decides per location.
SQL in ``queries/channel_locations.sql``; every function runs on the caller's
connection. The per-SKU row in ``channel_sync_state`` keeps the SKU's claim, lease and
fencing: these rows are written only where that row's token allowed the write."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from stockkeeper.domain.propagation import SyncStatus
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class LocationState:
    """One SKU at one location of a channel: what we last sent, what it shows (None:
    never told, or not stocked there when read back)."""

    location_id: str
    figure: int
    shown: int | None
    pushed_at: datetime | None


@dataclass(frozen=True, slots=True)
class LocationFigure:
    """A figure for one SKU at one location of a channel, and what the location shows."""

    sku: str
    location_id: str
    figure: int
    shown: int | None


@translated
async def states(
    conn: Conn, channel: str, skus: Sequence[str]
) -> dict[str, dict[str, LocationState]]:
    """Per SKU (those with any), its rows by location."""
    out: dict[str, dict[str, LocationState]] = {}
    for r in await conn.fetch(q("location_states"), channel, list(skus)):
        out.setdefault(r["sku"], {})[r["location_id"]] = LocationState(
            r["location_id"], r["figure"], r["shown"], r["pushed_at"]
        )
    return out


async def _put(conn: Conn, query: str, channel: str, rows: Sequence[LocationFigure]) -> None:
    if rows:
        await conn.execute(
            q(query),
            channel,
            [r.sku for r in rows],
            [r.location_id for r in rows],
            [r.figure for r in rows],
            [r.shown for r in rows],
        )


@translated
async def pushed(conn: Conn, channel: str, rows: Sequence[LocationFigure]) -> None:
    """The channel acknowledged these figures (in the settling transaction)."""
    await _put(conn, "location_pushed", channel, rows)


@translated
async def read_back(conn: Conn, channel: str, rows: Sequence[LocationFigure]) -> None:
    """What a read-back found at each location, against our figure now."""
    await _put(conn, "location_read_back", channel, rows)


@dataclass(frozen=True, slots=True)
class LocatedReadBack:
    """A read-back of one SKU over every location of a channel, decided per location."""

    sku: str
    shown: int | None  # the total the mapped locations show; None: none stocks it
    version: int
    figure: int  # our total figure now
    seen_seq: int
    drifted: bool  # some location shows something else than its figure


@translated
async def repair_drift(
    conn: Conn, channel: str, reads: Sequence[LocatedReadBack]
) -> dict[str, SyncStatus]:
    """The per-SKU rows after a per-location read-back (one statement); the status after
    of each SKU not left alone (see ``location_drift``)."""
    if not reads:
        return {}
    rows = await conn.fetch(
        q("location_drift"),
        channel,
        [r.sku for r in reads],
        [r.shown for r in reads],
        [r.version for r in reads],
        [r.figure for r in reads],
        [r.seen_seq for r in reads],
        [r.drifted for r in reads],
    )
    return {r["sku"]: SyncStatus(r["status"]) for r in rows}
