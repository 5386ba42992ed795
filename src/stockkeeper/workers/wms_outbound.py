"""The wms-outbound worker: tells the WMS about allocations, releases and confirmations.

Two halves. The ``wms.outbound`` consumer turns each reservation event into outbound
items, in the transaction that records the message (so a redelivery adds nothing).
The sender claims due items in batches (``outbound_batch_size``, waiting up to
``outbound_wait_ms`` for a batch to fill), sends them in one call, and marks them
SENT. The WMS de-duplicates by event id, so a batch sent twice (a crash between the
call and the commit) is booked once. A WMS that keeps failing means the batch is
retried with backoff and, past ``outbound_max_attempts``, dead-lettered; replaying
that dead letter sends the items again. Every try of every call lands in ``wms_call``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockkeeper.config import WmsConnectorConfig
from stockkeeper.connectors.http import ConnectorRejected, ConnectorUnavailable
from stockkeeper.connectors.wms import OutboundItem, WmsClient
from stockkeeper.domain.backoff import Backoff
from stockkeeper.domain.wms import ACTION_FOR_EVENT, outbound_lines
from stockkeeper.messaging.consumer import EffectHandler, PermanentError, dead_letter
from stockkeeper.messaging.envelope import Envelope, first_error
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.unit import Clock, transaction
from stockkeeper.services.wms import OUTBOUND_QUEUE, OUTBOUND_REARM, WmsService
from stockkeeper.store import connector_state
from stockkeeper.store import wms as repo
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.waiting import wait_any
from stockkeeper.workers.round_errors import RoundErrors

LOGGER = "stockkeeper.wms_outbound"
log = get_logger(LOGGER)

IDLE_POLL_S = 1.0


class _Line(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sku: str = Field(min_length=1, max_length=128)
    batch_id: int = Field(ge=1)
    quantity: int = Field(ge=1)


class _ReservationEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")
    order_id: str = Field(min_length=1, max_length=128)
    lines: list[_Line]


class _Rearm(BaseModel):
    model_config = ConfigDict(extra="ignore")
    connector: str
    event_ids: list[str] = Field(min_length=1)


class WmsOutboundWorker:
    def __init__(
        self,
        service: WmsService,
        clients: dict[str, WmsClient],
        configs: Sequence[WmsConnectorConfig],
        pool: Pool,
        metrics: Metrics,
        clock: Clock,
        calls: dict[str, list[repo.CallRow]],
    ) -> None:
        self.service = service
        self.clients = clients
        self.configs = {c.id: c for c in configs}
        self.pool = pool
        self.metrics = metrics
        self.clock = clock
        # Each connector's client appends a record per try here; drained per send.
        self.calls = calls
        self.wake = asyncio.Event()

    # -- the consumer half ---------------------------------------------------------

    def handler(self) -> EffectHandler:
        async def handle(conn: Conn, env: Envelope) -> None:
            if env.type == OUTBOUND_REARM:
                await self._rearm(conn, env)
            elif env.type in ACTION_FOR_EVENT:
                try:
                    event = _ReservationEvent.model_validate(env.payload)
                except ValidationError as exc:
                    raise PermanentError(f"bad {env.type} payload: {first_error(exc)}") from None
                lines = outbound_lines(str(env.id), env.type, event.model_dump())
                await self.service.record_outbound(conn, env.id, lines)
            else:
                return  # not for the WMS (a binding added later, say): nothing to do
            self.wake.set()

        return handle

    async def _rearm(self, conn: Conn, env: Envelope) -> None:
        try:
            doc = _Rearm.model_validate(env.payload)
        except ValidationError as exc:
            raise PermanentError(f"bad rearm payload: {first_error(exc)}") from None
        n = await self.service.rearm_outbound(conn, doc.connector, doc.event_ids)
        log.info("wms_outbound.rearmed", connector=doc.connector, items=n)

    # -- the sender half -----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info("wms_outbound.started", connectors=list(self.configs))
        if not self.configs:
            # No WMS configured: the consumer acknowledges events, there is nothing to send.
            await stop.wait()
            return
        try:
            await asyncio.gather(*(self._sender(name, stop) for name in self.configs))
        finally:
            for c in self.clients.values():
                await c.aclose()
        log.info("wms_outbound.stopped")

    async def _sender(self, name: str, stop: asyncio.Event) -> None:
        cfg = self.configs[name]
        wait_s = cfg.outbound_wait_ms / 1000
        errors = RoundErrors("wms-outbound", "wms_outbound", self.metrics, LOGGER, connector=name)
        while not stop.is_set():
            self.wake.clear()
            try:
                sent = await self.flush_once(name)
                errors.ok()
            except Exception as exc:
                sent = None
                pause = errors.failed("wms_outbound.flush_failed", exc)
                if pause is not None:  # the database is away: nothing to send meanwhile
                    await wait_any(stop, at_most=pause)
                    continue
            if sent is None or sent == 0:
                await wait_any(stop, self.wake, at_most=IDLE_POLL_S)
            elif sent < 0:
                # A partial batch, younger than the wait: give it time to fill.
                await wait_any(stop, at_most=min(wait_s, -sent / 1000))

    async def flush_once(self, name: str) -> int:
        """Send one batch if one is ready. Returns the items handled, 0 when nothing is
        due, or minus the milliseconds a partial batch should still wait."""
        cfg = self.configs[name]
        async with self.pool.acquire() as conn:
            due, oldest_s = await repo.outbound_due(conn, name, cfg.outbound_batch_size)
            self.metrics.wms_outbound_pending.labels(connector=name).set(due)
            if due == 0:
                return 0
            left_ms = cfg.outbound_wait_ms - oldest_s * 1000
            if due < cfg.outbound_batch_size and left_ms > 0:
                return -max(1, int(left_ms))
            items = await repo.claim_outbound(
                conn, name, cfg.outbound_batch_size, self._lease_s(cfg)
            )
        if items:
            await self._send(name, items)
        return len(items)

    @staticmethod
    def _lease_s(cfg: WmsConnectorConfig) -> float:
        """Long enough for every try of one call; a crashed sender's batch comes back."""
        per_try = (cfg.timeout_ms + cfg.backoff_max_ms) / 1000
        return max(30.0, per_try * cfg.max_attempts)

    async def _send(self, name: str, items: Sequence[repo.OutboundRow]) -> None:
        client = self.clients[name]
        wire = [
            OutboundItem(
                i.event_id, i.action, i.order_id, i.sku, i.location, i.lot_number, i.quantity
            )
            for i in items
        ]
        self.metrics.wms_outbound_batch.labels(connector=name).observe(len(items))
        try:
            results = await client.send(wire)
        except ConnectorRejected as exc:
            if len(items) > 1:
                # One bad item must not hold the others back: send each on its own.
                await self._record_calls(name, items)
                for item in items:
                    await self._send(name, [item])
                return
            await self._give_up(name, items, f"WMS refused it: {exc}")
            return
        except ConnectorUnavailable as exc:
            await self._retry_later(name, items, exc)
            return
        done = [(i.id, results.get(i.event_id, "applied")) for i in items]
        async with transaction(self.pool) as c:
            await self._insert_calls(c, name, items)
            await repo.outbound_sent(c, done)
        for _, result in done:
            self.metrics.wms_outbound_sent.labels(connector=name, result=result).inc()

    async def _retry_later(
        self, name: str, items: Sequence[repo.OutboundRow], exc: ConnectorUnavailable
    ) -> None:
        cfg = self.configs[name]
        attempts = max(i.attempts for i in items)
        if attempts >= cfg.outbound_max_attempts:
            await self._give_up(name, items, f"WMS unavailable after {attempts} sends: {exc}")
            return
        backoff = Backoff(cfg.outbound_backoff_base_ms / 1000, cfg.outbound_backoff_max_ms / 1000)
        delay_s = backoff.delay(attempts, exc.retry_after)
        async with transaction(self.pool) as c:
            await self._insert_calls(c, name, items)
            await repo.outbound_retry(c, [i.id for i in items], delay_s, str(exc)[:2000])
            await connector_state.record_failure(c, name, f"send failed: {exc}", self.clock())
        self.metrics.wms_outbound_sent.labels(connector=name, result="retried").inc(len(items))
        log.warning(
            "wms_outbound.retry", connector=name, items=len(items), delay_s=delay_s, error=str(exc)
        )

    async def _give_up(self, name: str, items: Sequence[repo.OutboundRow], error: str) -> None:
        """Dead-letter the batch: the operator sees it, and a replay sends it again."""
        body = WmsService.rearm_envelope(name, items, self.clock())
        async with transaction(self.pool) as c:
            await self._insert_calls(c, name, items)
            await repo.outbound_dead(c, [i.id for i in items], error[:2000])
            await connector_state.record_failure(c, name, error, self.clock())
            await dead_letter(
                c,
                queue=OUTBOUND_QUEUE,
                message_id=str(Envelope.parse(body).id),
                routing_key=OUTBOUND_REARM,
                body=body,
                headers={"connector": name},
                error=error,
                attempts=max(i.attempts for i in items),
            )
        self.metrics.dead_letters.labels(queue=OUTBOUND_QUEUE).inc()
        self.metrics.wms_outbound_sent.labels(connector=name, result="dead_lettered").inc(
            len(items)
        )
        log.error("wms_outbound.dead_lettered", connector=name, items=len(items), error=error)

    async def _record_calls(self, name: str, items: Sequence[repo.OutboundRow]) -> None:
        async with self.pool.acquire() as c:
            await self._insert_calls(c, name, items)

    async def _insert_calls(self, conn: Conn, name: str, items: Sequence[repo.OutboundRow]) -> None:
        taken, self.calls[name][:] = list(self.calls[name]), []
        first, last = items[0].id, items[-1].id
        rows = [replace(c, items=len(items), first_item=first, last_item=last) for c in taken]
        await repo.insert_calls(conn, name, rows)
