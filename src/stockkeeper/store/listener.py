"""LISTEN then poll: the one loop pattern behind the dispatcher, the embedded queue and
the propagator.

A :class:`Listener` holds one ``LISTEN`` connection for a process and fans each
``NOTIFY`` out to the :class:`asyncio.Event` of whoever subscribed to that channel (and
payload). It checks the connection every ``health_every_s`` and re-opens it when it died
(a database restart, ``pg_terminate_backend``), then wakes every subscriber once so
nothing notified while it was away waits for the next poll. :func:`listen_then_poll`
is the loop on top: do a step, and when the step found nothing more to do, wait for a
wake-up or the poll interval, whichever is first; a failing step backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable

from stockkeeper.domain.backoff import Backoff
from stockkeeper.observability.logging import get_logger
from stockkeeper.store.pool import Pool, PooledConn, is_open, ping
from stockkeeper.waiting import wait_any

log = get_logger("stockkeeper.listener")

ANY_PAYLOAD = None
HEALTH_CHECK_TIMEOUT_S = 5.0
RECONNECT = Backoff(0.2, 5.0)
STEP_ERRORS = Backoff(0.5, 30.0)


class Listener:
    """One LISTEN connection, re-opened when it dies; see the module docstring."""

    def __init__(
        self,
        pool: Pool,
        name: str,
        *,
        health_every_s: float = 5.0,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.name = name
        self.health_every_s = health_every_s
        self.on_reconnect = on_reconnect
        self._subs: dict[str, dict[str | None, list[asyncio.Event]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self._conn: PooledConn | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.reconnects = 0

    def subscribe(self, channel: str, payload: str | None = ANY_PAYLOAD) -> asyncio.Event:
        """An event set on every NOTIFY on ``channel`` (with ``payload``, if given).
        Subscribe before :meth:`start`."""
        event = asyncio.Event()
        self._subs[channel][payload].append(event)
        return event

    @property
    def healthy(self) -> bool:
        return is_open(self._conn)

    async def start(self) -> None:
        """Open the connection and LISTEN; then keep it healthy in the background."""
        await self._open()
        self._stop.clear()
        self._task = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def __aenter__(self) -> Listener:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def wake_all(self) -> None:
        for by_payload in self._subs.values():
            for events in by_payload.values():
                for event in events:
                    event.set()

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        by_payload = self._subs.get(channel)
        if by_payload is None:
            return
        for event in by_payload.get(ANY_PAYLOAD, ()):
            event.set()
        for event in by_payload.get(str(payload), ()) if payload is not None else ():
            event.set()

    async def _open(self) -> None:
        conn = await self.pool.acquire()
        try:
            for channel in self._subs:
                await conn.add_listener(channel, self._on_notify)
        except BaseException:
            await self.pool.release(conn)
            raise
        self._conn = conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if is_open(conn):
            with contextlib.suppress(Exception):
                for channel in self._subs:
                    await conn.remove_listener(channel, self._on_notify)
        with contextlib.suppress(Exception):
            await self.pool.release(conn)

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or not is_open(conn):
            return False
        try:
            await asyncio.wait_for(ping(conn), HEALTH_CHECK_TIMEOUT_S)
        except (Exception, TimeoutError):
            return False
        return True

    async def _watch(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            await wait_any(
                self._stop, at_most=RECONNECT.delay(attempt) if attempt else self.health_every_s
            )
            if self._stop.is_set() or await self._alive():
                attempt = 0
                continue
            await self._drop()
            try:
                await self._open()
            except Exception as exc:
                attempt += 1
                log.warning("listener.reconnect_failed", listener=self.name, error=str(exc))
                continue
            attempt = 0
            self.reconnects += 1
            log.info("listener.reconnected", listener=self.name, reconnects=self.reconnects)
            if self.on_reconnect is not None:
                self.on_reconnect()
            self.wake_all()  # whatever was notified while away is found by one poll


async def listen_then_poll(
    step: Callable[[], Awaitable[bool]],
    wake: asyncio.Event,
    stop: asyncio.Event,
    *,
    poll_s: float,
    on_error: Callable[[Exception], None],
    errors: Backoff = STEP_ERRORS,
    resume: asyncio.Event | None = None,
) -> None:
    """Run ``step`` until ``stop``: again at once while it returns True (more work may be
    waiting), otherwise after ``wake`` is set or ``poll_s`` passed. A step that raises is
    reported to ``on_error`` and tried again after a growing pause, cut short when
    ``resume`` is set (what failed says it is back)."""
    failures = 0
    while not stop.is_set():
        wake.clear()
        if resume is not None:
            resume.clear()
        try:
            more = await step()
        except Exception as exc:
            failures += 1
            on_error(exc)
            waits = (stop,) if resume is None else (stop, resume)
            await wait_any(*waits, at_most=errors.delay(failures))
            continue
        failures = 0
        if not more:
            await wait_any(stop, wake, at_most=poll_s)
