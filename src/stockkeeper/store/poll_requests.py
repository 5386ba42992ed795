"""Repository for ``poll_request``: "poll now" for a polled connector, asked through
the database so whichever replica holds the connector's poller hears it (NOTIFY
``stockkeeper_poll`` with the connector id as payload wakes it; the row is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q

CHANNEL = "stockkeeper_poll"


@dataclass(frozen=True, slots=True)
class PollRequest:
    connector: str
    requested_at: datetime
    requested_by: str


@translated
async def request(conn: Conn, connector: str, requested_by: str) -> PollRequest:
    """The pending request for ``connector``: made now, or the one already pending."""
    row = await conn.fetchrow(q("request_poll"), connector, requested_by)
    assert row is not None
    await conn.execute(q("notify_poll"), connector)
    return PollRequest(row["connector"], row["requested_at"], row["requested_by"])


@translated
async def take(conn: Conn, connector: str) -> PollRequest | None:
    """Take the pending request, if any, as its poll starts."""
    row = await conn.fetchrow(q("take_poll_request"), connector)
    if row is None:
        return None
    return PollRequest(connector, row["requested_at"], row["requested_by"])


@translated
async def pending(conn: Conn) -> list[PollRequest]:
    rows = await conn.fetch(q("pending_polls"))
    return [PollRequest(r["connector"], r["requested_at"], r["requested_by"]) for r in rows]


async def listen(conn: Conn, connector: str, wake: asyncio.Event) -> Callable[[], Awaitable[None]]:
    """LISTEN on ``conn`` (a session connection the caller holds) for requests for
    ``connector``, setting ``wake``; returns what stops listening."""

    def heard(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == connector:
            wake.set()

    await conn.add_listener(CHANNEL, heard)

    async def stop() -> None:
        with contextlib.suppress(Exception):  # the connection may be gone already
            await conn.remove_listener(CHANNEL, heard)

    return stop
