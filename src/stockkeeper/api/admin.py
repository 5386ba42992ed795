"""admin-api: dead letters and status (force sync arrives with the WMS)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, FastAPI, Query
from starlette.responses import Response

from stockkeeper.api import schemas
from stockkeeper.api.auth import Principal, require
from stockkeeper.api.common import new_app
from stockkeeper.api.problems import JSONResponse

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container
    from stockkeeper.services.admin import Operations

ADMIN = Depends(require("admin"))


def create_admin_app(container: Container) -> FastAPI:
    app = new_app(container, "admin-api", "stockkeeper admin-api")

    async def ops() -> Operations:
        return await container.operations()

    @app.get("/admin/dead-letters", responses=schemas.PROBLEMS, tags=["dead letters"])
    async def list_dead_letters(
        queue: Annotated[str | None, Query(max_length=200)] = None,
        status: Literal["DEAD", "REPLAYED", "DISCARDED"] | None = "DEAD",
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """Messages that failed every attempt (or could not be read), oldest first."""
        return JSONResponse(await (await ops()).dead_letters(queue, status, after, limit))

    @app.post(
        "/admin/dead-letters/{dead_letter_id}/replay",
        responses=schemas.PROBLEMS,
        tags=["dead letters"],
    )
    async def replay(dead_letter_id: int, who: Principal = ADMIN) -> Response:
        """Send the message back to its queue as a first attempt."""
        return JSONResponse(await (await ops()).replay(dead_letter_id, who.name))

    @app.post(
        "/admin/dead-letters/{dead_letter_id}/discard",
        responses=schemas.PROBLEMS,
        tags=["dead letters"],
    )
    async def discard(dead_letter_id: int, who: Principal = ADMIN) -> Response:
        """Drop the message for good (kept in the table, marked DISCARDED)."""
        return JSONResponse(await (await ops()).discard(dead_letter_id, who.name))

    @app.get("/admin/status", tags=["status"])
    async def status(who: Principal = ADMIN) -> Response:
        """Outbox backlog, queue depths and open dead letters."""
        return JSONResponse(await (await ops()).status())

    return app
