"""Waiting on several asyncio events at once, with a time limit."""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event, at_most: float | None = None) -> None:
    """Return when any of ``events`` is set, or after ``at_most`` seconds, whichever is first."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=at_most, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
