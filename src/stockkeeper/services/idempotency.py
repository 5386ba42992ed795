"""Idempotency-Key: a use case applied once per key, its answer recorded with it.

The key is claimed first, in the same transaction as the effect it guards: a repeat
sent while the first is still running waits on that row and then replays the first
answer, errors included. The same key with another request is refused (``KeyReused``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from stockkeeper.domain.errors import InvalidRequest
from stockkeeper.store import idempotency as repo
from stockkeeper.store.pool import Conn, Pool

MAX_KEY_LENGTH = 255


class KeyReused(InvalidRequest):
    """The Idempotency-Key was already used with another request."""


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """Whose key, the key, and the fingerprint of the request it was first sent with."""

    principal: str
    key: str
    method: str
    path: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer recorded for a key: given once, then replayed as it was."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def fingerprint(method: str, path: str, payload: Any) -> str:
    """The request as a key remembers it: method, path and body, order of keys aside."""
    doc = orjson.dumps([method, path, payload], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(doc).hexdigest()


async def once(pool: Pool, key: IdempotencyKey, run: Callable[[Conn], Awaitable[Answer]]) -> Answer:
    """Run ``run`` once per key, in the transaction that records its answer.

    ``run`` gets the transaction's connection and hands it to the use case, which
    works in a savepoint of it; a use case's error is an answer too, recorded and
    replayed. Only the key's own failure (``KeyReused``) is raised.
    """
    async with pool.acquire() as conn, conn.transaction():
        if not await repo.claim_key(
            conn, key.principal, key.key, key.method, key.path, key.fingerprint
        ):
            stored = await repo.get_key(conn, key.principal, key.key)
            assert stored is not None
            if stored.request_hash != key.fingerprint:
                raise KeyReused("this Idempotency-Key was already used with another request")
            return Answer(stored.status_code, stored.body, replayed=True)
        answer = await run(conn)
        await repo.store_key(conn, key.principal, key.key, answer.status, answer.body)
    return answer
