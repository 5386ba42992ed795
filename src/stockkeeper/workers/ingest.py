"""The ingest worker: applies ``ingest.<connector>`` messages to the books.

Runs under the consumer runner, so each message's effect commits with its
``processed_message`` mark. Inside a message every record is validated on its own: a
bad one becomes a dead letter with its reason and the others are applied.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockkeeper.connectors.records import parse_levels, parse_sales
from stockkeeper.messaging.consumer import EffectHandler, PermanentError
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.ingest import IngestService, refuse
from stockkeeper.store.pool import Conn


class IngestMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connector: str = Field(min_length=1, max_length=64)
    levels: list[Any] = Field(default_factory=list, max_length=50_000)
    sales: list[Any] = Field(default_factory=list, max_length=50_000)


def ingest_handler(service: IngestService) -> EffectHandler:
    async def handle(conn: Conn, env: Envelope) -> None:
        try:
            msg = IngestMessage.model_validate(env.payload)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise PermanentError(f"not an ingest message: {where}: {err['msg']}") from None
        levels, bad_levels = parse_levels(msg.levels)
        sales, bad_sales = parse_sales(msg.sales)
        refused = bad_levels + bad_sales
        if refused:
            await refuse(conn, msg.connector, refused)
            service.metrics.dead_letters.labels(queue="inventory.ingest").inc(len(refused))
            service.metrics.ingest_records.labels(connector=msg.connector, outcome="refused").inc(
                len(refused)
            )
        await service.apply(conn, msg.connector, levels, sales, reference=f"ingest:{env.id}")

    return handle
