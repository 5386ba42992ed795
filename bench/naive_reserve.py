"""The baseline no one here wrote: a reservation endpoint as a typical FastAPI team would.

One transaction per request: ``SELECT ... FOR UPDATE`` of the SKU's batches, the
allocation in Python, then an UPDATE, a reservation and its lines, a ledger row and an
outbox row per request, each its own statement. Written plainly on purpose (no
stockkeeper code), on stockkeeper's own schema so the bench's database check and
``stockkeeper audit`` apply to it too. Run by ``bench/reserve.py`` as the ``naive`` row:

    python bench/naive_reserve.py --port 8090 --database-url postgresql://...
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class Line(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


class ReserveIn(BaseModel):
    order_id: str
    lines: list[Line]
    ttl_seconds: int | None = None
    location: str | None = None


def make_app(database_url: str, token: str, pool_size: int) -> FastAPI:
    pool: asyncpg.Pool | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal pool
        pool = await asyncpg.create_pool(database_url, min_size=pool_size, max_size=pool_size)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    def check_token(authorization: str | None) -> None:
        if authorization != f"Bearer {token}":
            raise HTTPException(401, "unauthorized")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/noop")
    async def noop(body: ReserveIn, authorization: str | None = Header(None)) -> JSONResponse:
        check_token(authorization)
        return JSONResponse({"order_id": body.order_id}, status_code=201)

    @app.post("/inventory/reserve")
    async def reserve(body: ReserveIn, authorization: str | None = Header(None)) -> JSONResponse:
        check_token(authorization)
        assert pool is not None
        expires_at = datetime.now(UTC) + timedelta(seconds=body.ttl_seconds or 900)
        out_lines = []
        async with pool.acquire() as conn, conn.transaction():
            plan = []
            for line in body.lines:
                batches = await conn.fetch(
                    "SELECT id, location, lot_number,"
                    " on_hand - unavailable - reserved - committed AS available"
                    " FROM sku_batch WHERE sku = $1 AND (expires_at IS NULL OR expires_at > now())"
                    " ORDER BY expires_at NULLS LAST, id FOR UPDATE",
                    line.sku,
                )
                left = line.quantity
                for b in batches:
                    take = min(left, b["available"])
                    if take > 0:
                        plan.append((line.sku, b, take))
                        left -= take
                if left > 0:
                    return JSONResponse(
                        {"type": "insufficient-stock", "status": 409}, status_code=409
                    )
            rid = await conn.fetchval(
                "INSERT INTO reservation (order_id, status, location, lines, expires_at)"
                " VALUES ($1, 'PENDING', $2, $3::jsonb, $4) ON CONFLICT (order_id) DO NOTHING"
                " RETURNING id",
                body.order_id,
                body.location,
                json.dumps([li.model_dump() for li in body.lines]),
                expires_at,
            )
            if rid is None:
                return JSONResponse({"type": "conflict", "status": 409}, status_code=409)
            for no, (sku, b, take) in enumerate(plan):
                await conn.execute(
                    "UPDATE sku_batch SET reserved = reserved + $2, version = version + 1,"
                    " updated_at = now() WHERE id = $1",
                    b["id"],
                    take,
                )
                await conn.execute(
                    "INSERT INTO reservation_line"
                    " (reservation_id, line_no, sku, batch_id, quantity)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    rid,
                    no,
                    sku,
                    b["id"],
                    take,
                )
                await conn.execute(
                    "INSERT INTO inventory_ledger"
                    " (batch_id, sku, entry_type, d_reserved, source, reference_id)"
                    " VALUES ($1, $2, 'ORDER_ALLOCATE', $3, 'naive', $4)",
                    b["id"],
                    sku,
                    take,
                    body.order_id,
                )
                out_lines.append({"sku": sku, "batch_id": b["id"], "quantity": take})
            await conn.execute(
                "INSERT INTO domain_event (event_id, event_type, source, payload, ordering_key)"
                " VALUES ($1, 'inventory.allocated', 'naive', $2::jsonb, $3)",
                uuid.uuid4(),
                json.dumps({"order_id": body.order_id, "lines": out_lines}),
                f"order:{body.order_id}",
            )
        return JSONResponse(
            {
                "order_id": body.order_id,
                "status": "PENDING",
                "expires_at": expires_at.isoformat(),
                "lines": out_lines,
            },
            status_code=201,
        )

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--pool-size", type=int, default=20)
    a = p.parse_args()
    app = make_app(a.database_url, a.token, a.pool_size)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
