"""Operations: dead letters (show, replay, discard) and the status of the pipes."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from stockkeeper.domain.errors import Conflict, NotFound
from stockkeeper.messaging.broker import Broker, OutgoingMessage
from stockkeeper.messaging.consumer import carried_headers
from stockkeeper.messaging.envelope import ATTEMPT_HEADER
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store import dead_letters, outbox
from stockkeeper.store.dead_letters import DeadLetter
from stockkeeper.store.pool import Pool


def dead_letter_json(r: DeadLetter) -> dict[str, Any]:
    return {
        "id": r.id,
        "queue": r.queue,
        "message_id": str(r.message_id) if r.message_id else None,
        "routing_key": r.routing_key,
        "body": r.body,
        # The exact bytes, for a body that is not JSON (any bytes at all).
        "raw_body_base64": (
            base64.b64encode(r.raw_body).decode() if r.body is None and r.raw_body else None
        ),
        "headers": r.headers,
        "error": r.error,
        "attempts": r.attempts,
        "status": r.status,
        "created_at": r.created_at.isoformat(),
        "resolved_at": r.resolved_at.isoformat() if r.resolved_at else None,
        "resolved_by": r.resolved_by,
    }


class Operations:
    def __init__(self, pool: Pool, broker: Broker, metrics: Metrics) -> None:
        self.pool = pool
        self.broker = broker
        self.metrics = metrics

    async def dead_letters(
        self, queue: str | None, status: str | None, after: int, limit: int
    ) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            rows = await dead_letters.page(conn, queue, status, after, limit + 1)
        items = [dead_letter_json(r) for r in rows[:limit]]
        return {"items": items, "next": items[-1]["id"] if len(rows) > limit else None}

    async def replay(self, dead_letter_id: int, who: str) -> dict[str, Any]:
        """Send the message back to its queue, as attempt 1, through the normal path."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await dead_letters.lock(conn, dead_letter_id)
            if row is None:
                raise NotFound(f"no dead letter {dead_letter_id}")
            if row.status != "DEAD":
                raise Conflict(f"dead letter {dead_letter_id} is already {row.status}")
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
            await dead_letters.resolve(conn, dead_letter_id, "REPLAYED", who)
            row = await dead_letters.lock(conn, dead_letter_id)
        assert row is not None
        return dead_letter_json(row)

    async def discard(self, dead_letter_id: int, who: str) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await dead_letters.lock(conn, dead_letter_id)
            if row is None:
                raise NotFound(f"no dead letter {dead_letter_id}")
            if row.status == "DISCARDED":
                return dead_letter_json(row)
            if row.status != "DEAD":
                raise Conflict(f"dead letter {dead_letter_id} is already {row.status}")
            await dead_letters.resolve(conn, dead_letter_id, "DISCARDED", who)
            row = await dead_letters.lock(conn, dead_letter_id)
        assert row is not None
        return dead_letter_json(row)

    async def status(self) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            events = await outbox.stats(conn)
            dead = await dead_letters.open_per_queue(conn)
        doc: dict[str, Any] = {
            "outbox": {
                "pending": events.pending,
                "failed": events.failed,
                "oldest_pending_seconds": events.oldest_pending_s,
            },
            "dead_letters": dict(dead),
            "broker": {"kind": self.broker.name},
        }
        self.metrics.outbox_backlog.set(events.pending)
        self.metrics.outbox_oldest_age.set(events.oldest_pending_s or 0.0)
        for queue, n in dead.items():
            self.metrics.dead_letters_open.labels(queue=queue).set(n)
        try:
            depths = await self.broker.queue_depths()
            doc["queues"] = depths
            for name, depth in depths.items():
                self.metrics.queue_depth.labels(queue=name).set(depth)
        except Exception as exc:  # the status page must answer while the broker is down
            doc["broker"]["error"] = f"{type(exc).__name__}: {exc}"
        return doc
