"""Idempotency-Key: a use case applied once per key, its answer recorded with it.

The key is written last, with its answer, in the transaction of the effect it guards
(D-302), and in the same statement as the use case's events, which wait for it
(``unit.add_events``): no statement on top of the use case's own (D-365). A use case
without events (a repeat of an order or a reference, an adjustment that changes
nothing) and an error answer still write the key in a statement of its own. A repeat
runs the use case too, in its own transaction, until its key insert meets the first
one's row (waiting for that transaction to end if it still runs); then its effects roll
back and it replays the first answer, errors included. The same key with another
request is refused (``KeyReused``), its effects rolled back alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stockkeeper.domain.errors import InvalidRequest
from stockkeeper.domain.events import Event
from stockkeeper.services.unit import key_in_statement, solo
from stockkeeper.store import idempotency as repo
from stockkeeper.store import outbox
from stockkeeper.store.errors import UniqueViolated
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.store.transactions import retried

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
    # False for an answer of the moment (``TryAgain``, D-479): given, never recorded, so
    # a retry with the key runs the request again.
    keep: bool = True


def fingerprint(method: str, path: str, payload: Any) -> str:
    """The request as a key remembers it: method, path and body, order of keys aside."""
    doc = orjson.dumps([method, path, payload], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(doc).hexdigest()


class _Taken(Exception):
    """Another request holds the key: roll our transaction back and replay its answer."""


@dataclass(slots=True)
class _Failed(Exception):
    """The use case failed: its effects roll back, its answer is still recorded."""

    answer: Answer


async def once(
    pool: Pool,
    key: IdempotencyKey,
    run: Callable[[Conn], Awaitable[Answer]],
    *,
    render: Callable[[Any], Answer] | None = None,
) -> Answer:
    """Run ``run`` once per key, in the transaction that records its answer.

    ``run`` gets the transaction's connection and hands it to the use case, which has
    that transaction to itself (``unit.solo``: no savepoint); a use case's error is an
    answer too, recorded (after its effects rolled back) and replayed. Only the key's
    own failure (``KeyReused``) is raised.

    ``render`` (the use case's result as its answer): for a use case of one statement
    and no transaction (orders' ``place``), which writes the key in that statement
    itself; no transaction is opened for it (D-366).
    """
    if render is not None:
        return await _once_in_statement(pool, key, run, render)
    async with pool.acquire() as conn:

        async def attempt() -> Answer:
            async with conn.transaction():
                async with solo(conn) as state:
                    answer = await run(conn)
                if state.failed or not answer.keep:
                    raise _Failed(answer)
                if not await _record(conn, key, answer, state.held):
                    raise _Taken
            return answer

        try:
            return await retried(attempt)
        except _Failed as failed:
            if not failed.answer.keep or await _record(conn, key, failed.answer):
                return failed.answer
        except _Taken:
            pass
        return await _replay(conn, key)


async def _once_in_statement(
    pool: Pool,
    key: IdempotencyKey,
    run: Callable[[Conn], Awaitable[Answer]],
    render: Callable[[Any], Answer],
) -> Answer:
    """The use case's statement writes the key with its effect; when it applied none
    (a repeat, a refusal) the key goes in after it, on its own: there is nothing it
    must commit with."""
    async with pool.acquire() as conn:
        try:
            async with key_in_statement(conn, lambda result: _row(key, render(result))) as state:
                answer = await run(conn)
        except UniqueViolated as exc:
            # Another request holds the key: the statement wrote nothing.
            if exc.constraint != repo.KEY_CONSTRAINT:
                raise
            return await _replay(conn, key)
        if state.written or not answer.keep or await _record(conn, key, answer):
            return answer
        return await _replay(conn, key)


async def _replay(conn: Conn, key: IdempotencyKey) -> Answer:
    """The answer recorded for ``key`` by another request (or ``KeyReused``)."""
    stored = await repo.get_key(conn, key.principal, key.key)
    assert stored is not None  # the insert conflicted on it
    if stored.request_hash != key.fingerprint:
        raise KeyReused(
            "this Idempotency-Key was already used with another request", "header.Idempotency-Key"
        )
    return Answer(stored.status_code, stored.body, replayed=True)


def _row(key: IdempotencyKey, answer: Answer) -> repo.KeyRecord:
    return repo.KeyRecord(
        key.principal, key.key, key.method, key.path, key.fingerprint, answer.status, answer.body
    )


async def _record(
    conn: Conn, key: IdempotencyKey, answer: Answer, events: Sequence[Event] = ()
) -> bool:
    """The key with its answer, and the use case's held ``events`` in the same
    statement; False when another request holds the key."""
    if events:
        return await outbox.add_with_key(conn, events, _row(key, answer))
    return await repo.record_key(conn, _row(key, answer))
