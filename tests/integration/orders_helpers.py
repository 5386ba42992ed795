"""What the order tests share: carriers, an address, and ``drive``, the broker's stand-in."""

from __future__ import annotations

from typing import Any

from stockkeeper.bootstrap import Container
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.messaging.topology import exchange_for, queues_for
from stockkeeper.workers.saga import saga_handler

SHIP_TO: dict[str, Any] = {
    "name": "Ada",
    "line1": "Unter den Linden 1",
    "city": "Berlin",
    "country": "DE",
}
CARRIERS = [
    {"id": "post", "cost": "4.00", "reliability": "0.90", "transit_days": 4},
    {"id": "express", "cost": "9.00", "reliability": "0.99", "transit_days": 1},
    {"id": "courier", "cost": "1.00", "reliability": "1", "transit_days": 0, "countries": ["FR"]},
]


async def drive(c: Container) -> list[str]:
    """Hand the saga every PENDING outbox event its queue is bound to, oldest first, each
    in its own transaction, until none is left; mark them all SENT. The types handled."""
    handler = saga_handler(c.orders, Failpoints())
    handled: list[str] = []
    while True:
        async with c.pool.acquire() as conn:
            rows = await conn.fetch(
                "UPDATE domain_event SET status = 'SENT' WHERE status = 'PENDING' "
                "RETURNING id, event_id, event_type, payload, occurred_at"
            )
            if not rows:
                return handled
            for r in sorted(rows, key=lambda r: r["id"]):
                kind = r["event_type"]
                if "orders.saga" not in queues_for(exchange_for(kind), kind):
                    continue
                env = Envelope.new(
                    kind, r["payload"], occurred_at=r["occurred_at"], id_=r["event_id"]
                )
                async with conn.transaction():
                    await handler(conn, env)
                handled.append(kind)
