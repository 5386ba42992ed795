"""Operations: dead letters (show, replay, discard) and the status of the pipes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from stockkeeper.domain.errors import Conflict, NotFound
from stockkeeper.messaging.broker import Broker, OutgoingMessage
from stockkeeper.messaging.consumer import carried_headers
from stockkeeper.messaging.envelope import ATTEMPT_HEADER
from stockkeeper.messaging.topology import QUEUES
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.unit import transaction
from stockkeeper.services.wms.snapshot import REFUSED_ROW_PREFIX, SYNC_DEAD_LETTER_QUEUE
from stockkeeper.store import dead_letters, outbox
from stockkeeper.store.dead_letters import DeadLetter
from stockkeeper.store.pool import Conn, Pool


def _why_not_replayable(row: DeadLetter) -> str | None:
    """Why sending ``row`` back to its queue could not apply it (D-454), or None: a WMS
    row a sync refused is the WMS's data, not a message, and the wms.sync consumer would
    only dead-letter it again as an invalid envelope, losing its reason."""
    if row.queue == SYNC_DEAD_LETTER_QUEUE and (row.routing_key or "").startswith(
        REFUSED_ROW_PREFIX
    ):
        return (
            "is a WMS row a sync refused, not a message: correct it in the WMS, force a "
            "sync (POST /admin/wms/sync), then discard this one"
        )
    return None


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """A page of dead letters, oldest first; ``next`` is the id to page on, or None."""

    items: list[DeadLetter]
    next: int | None


@dataclass(frozen=True, slots=True)
class PipesStatus:
    """The pipes between the processes: outbox backlog, open dead letters per queue and
    the broker's queue depths (None, with ``broker_error``, when the broker is down)."""

    outbox: outbox.OutboxStats
    dead_letters: dict[str, int]
    broker: str
    queues: dict[str, int] | None
    broker_error: str | None


class Operations:
    def __init__(self, pool: Pool, broker: Broker, metrics: Metrics) -> None:
        self.pool = pool
        self.broker = broker
        self.metrics = metrics
        # Every queue whose open dead letters were ever reported here: one that has none
        # left is reported as 0, not left at its last count (D-405).
        self._dead_letter_queues = {spec.name for spec in QUEUES}

    async def dead_letters(
        self, queue: str | None, status: str | None, after: int, limit: int
    ) -> DeadLetterPage:
        async with self.pool.acquire() as conn:
            rows = await dead_letters.page(conn, queue, status, after, limit + 1)
        items = list(rows[:limit])
        return DeadLetterPage(items, items[-1].id if len(rows) > limit else None)

    async def replay(self, dead_letter_id: int, who: str, conn: Conn | None = None) -> DeadLetter:
        """Send the message back to its queue, as attempt 1, through the normal path.

        ``conn``: the transaction of an Idempotency-Key, which then records this answer.
        """
        async with transaction(self.pool, conn) as c:
            row = await dead_letters.lock(c, dead_letter_id)
            if row is None:
                raise NotFound(f"no dead letter {dead_letter_id}")
            if row.status != "DEAD":
                raise Conflict(f"dead letter {dead_letter_id} is already {row.status}")
            unreplayable = _why_not_replayable(row)
            if unreplayable:
                raise Conflict(f"dead letter {dead_letter_id} {unreplayable}")
            headers = {
                k: v for k, v in carried_headers(row.headers or {}).items() if k != ATTEMPT_HEADER
            }
            headers.update({ATTEMPT_HEADER: 1, "x-replayed-from": dead_letter_id})
            message_id = str(row.message_id or uuid.uuid4())
            assert row.raw_body is not None
            await self.broker.send_to_queue(
                row.queue,
                OutgoingMessage("", row.routing_key, row.raw_body, message_id, headers),
            )
            await dead_letters.resolve(c, dead_letter_id, "REPLAYED", who)
            row = await dead_letters.lock(c, dead_letter_id)
        assert row is not None
        return row

    async def discard(self, dead_letter_id: int, who: str, conn: Conn | None = None) -> DeadLetter:
        """Drop the message for good (kept, marked DISCARDED); discarding again answers
        the same. ``conn`` as for :meth:`replay`."""
        async with transaction(self.pool, conn) as c:
            row = await dead_letters.lock(c, dead_letter_id)
            if row is None:
                raise NotFound(f"no dead letter {dead_letter_id}")
            if row.status == "DISCARDED":
                return row
            if row.status != "DEAD":
                raise Conflict(f"dead letter {dead_letter_id} is already {row.status}")
            await dead_letters.resolve(c, dead_letter_id, "DISCARDED", who)
            row = await dead_letters.lock(c, dead_letter_id)
        assert row is not None
        return row

    async def status(self) -> PipesStatus:
        async with self.pool.acquire() as conn:
            events = await outbox.stats(conn)
            dead = await dead_letters.open_per_queue(conn)
        self.metrics.outbox_backlog.set(events.pending)
        self.metrics.outbox_oldest_age.set(events.oldest_pending_s or 0.0)
        self.metrics.outbox_failed_open.set(events.failed)
        self._dead_letter_queues.update(dead)
        for queue in self._dead_letter_queues:
            self.metrics.dead_letters_open.labels(queue=queue).set(dead.get(queue, 0))
        depths: dict[str, int] | None = None
        error: str | None = None
        try:
            depths = dict(await self.broker.queue_depths())
            for name, depth in depths.items():
                self.metrics.queue_depth.labels(queue=name).set(depth)
        except Exception as exc:  # the status page must answer while the broker is down
            error = f"{type(exc).__name__}: {exc}"
        return PipesStatus(events, dict(dead), self.broker.name, depths, error)
