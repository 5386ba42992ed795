"""Idempotency-Key for POST requests.

The key is claimed first, in the same transaction as the effect it guards: a repeat
sent while the first is still running waits on that row and then replays the first
answer, errors included. The same key with another request is 422.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from stockkeeper.api.auth import Principal
from stockkeeper.api.problems import ApiProblem, JSONResponse, ProblemResponse, domain_problem
from stockkeeper.domain.errors import DomainError
from stockkeeper.store import idempotency as repo
from stockkeeper.store.pool import Conn, Pool

Operation = Callable[[Conn | None], Awaitable[tuple[int, dict[str, Any]]]]
MAX_KEY_LENGTH = 255


def respond(status: int, body: dict[str, Any], replayed: bool = False) -> Response:
    cls = ProblemResponse if status >= 400 else JSONResponse
    headers = {"Idempotency-Replayed": "true"} if replayed else None
    return cls(body, status_code=status, headers=headers)


async def _attempt(op: Operation, conn: Conn | None, path: str) -> tuple[int, dict[str, Any]]:
    try:
        return await op(conn)
    except DomainError as exc:
        return domain_problem(exc, path)


async def run(request: Request, principal: Principal, payload: Any, op: Operation) -> Response:
    """Run ``op`` once per Idempotency-Key (or plainly, without the header)."""
    path = request.url.path
    key = request.headers.get("idempotency-key")
    if key is None:
        return respond(*await _attempt(op, None, path))
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ApiProblem("validation", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    digest = hashlib.sha256(
        orjson.dumps([request.method, path, payload], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    pool: Pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction():
        if not await repo.claim_key(conn, principal.name, key, request.method, path, digest):
            stored = await repo.get_key(conn, principal.name, key)
            assert stored is not None
            if stored.request_hash != digest:
                raise ApiProblem(
                    "validation", "this Idempotency-Key was already used with another request"
                )
            return respond(stored.status_code, stored.body, replayed=True)
        status, body = await _attempt(op, conn, path)
        await repo.store_key(conn, principal.name, key, status, body)
    return respond(status, body)
