"""The idempotent route: a use case, its answer as a response model, the Idempotency-Key.

The transaction that records the key with the use case's effect belongs to
``services/idempotency.py``; here the request becomes a key and a fingerprint, and
the use case's result (or its domain error) becomes the HTTP answer that is recorded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from stockkeeper.api.auth import Principal
from stockkeeper.api.problems import (
    ApiProblem,
    JSONResponse,
    ProblemResponse,
    domain_problem,
    problem_instance,
    request_path,
)
from stockkeeper.api.schemas import as_json
from stockkeeper.domain.errors import DomainError, TryAgain
from stockkeeper.services import idempotency
from stockkeeper.services.idempotency import MAX_KEY_LENGTH, Answer, IdempotencyKey
from stockkeeper.store.errors import TransactionLost, translate
from stockkeeper.store.pool import Conn

T = TypeVar("T")
log = structlog.get_logger(__name__)
# How many times a use case whose transaction PostgreSQL picked to give way (a
# deadlock, a serialization failure) is run again before the client is told to retry.
GIVE_WAY_RETRIES = 3
UseCase = Callable[[Conn | None], Awaitable[T]]
# A use case's result as HTTP: the status and the response model of the body, or the
# body already as the model's JSON (``as_json``).
Present = Callable[[T], tuple[int, BaseModel | dict[str, Any]]]


_KEY_DESCRIPTION = (
    f"Optional, 1 to {MAX_KEY_LENGTH} characters. The first answer to this key is "
    "recorded with the change; a repeat with the same body gets that answer again "
    "(Idempotency-Replayed: true), with another body 422."
)


def key_header() -> dict[str, Any]:
    """``openapi_extra=key_header()`` on every route that answers through ``run``: the
    Idempotency-Key header in the route's OpenAPI, as a declared optional header would
    show it. Documented, not declared: a declared header is a dependency FastAPI
    solves on every request, and ``run`` reads the header itself (D-363)."""
    schema = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": _KEY_DESCRIPTION,
        "title": "Idempotency-Key",
    }
    return {
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": schema,
                "description": _KEY_DESCRIPTION,
            }
        ]
    }


def respond(answer: Answer) -> Response:
    cls = ProblemResponse if answer.status >= 400 else JSONResponse
    headers = {"Idempotency-Replayed": "true"} if answer.replayed else None
    return cls(answer.body, status_code=answer.status, headers=headers)


async def _answer(
    use: UseCase[T], present: Present[T], conn: Conn | None, request: Request
) -> Answer:
    try:
        result = await use(conn)
    except DomainError as exc:
        status, body = domain_problem(exc, problem_instance(request.scope))
        return Answer(status, body, keep=not isinstance(exc, TryAgain))
    return _rendered(present, result)


def _rendered(present: Present[T], result: T) -> Answer:
    status, model = present(result)
    return Answer(status, model if isinstance(model, dict) else as_json(model))


def _key(
    request: Request, principal: Principal, key: str, payload: BaseModel | None
) -> IdempotencyKey:
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ApiProblem.invalid(
            "header.Idempotency-Key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters"
        )
    method, path = request.method, request_path(request)
    doc = payload.model_dump(mode="json") if payload is not None else {}
    return IdempotencyKey(
        principal.name, key, method, path, idempotency.fingerprint(method, path, doc)
    )


async def run(
    request: Request,
    principal: Principal,
    payload: BaseModel | None,
    use: UseCase[T],
    present: Present[T],
    *,
    one_statement: bool = False,
) -> Response:
    """Answer with ``present(await use(conn))``, once per Idempotency-Key if one is sent.

    Without the header the use case runs in a transaction of its own; with it, in the
    one that records the key, and a repeat replays the recorded answer.
    ``one_statement``: the use case is one statement with no transaction (placing an
    order), which writes the key itself, its answer rendered here by ``present``
    (D-366).
    """
    request.app.state.container.failpoints.hit("api.use_case")
    key = request.headers.get("idempotency-key")
    if key is None:
        return respond(await _given_way(lambda: _answer(use, present, None, request)))

    async def recorded(conn: Conn) -> Answer:
        return await _answer(use, present, conn, request)

    def render(result: T) -> Answer:
        return _rendered(present, result)

    pool = request.app.state.pool
    answer = await _given_way(
        lambda: idempotency.once(
            pool,
            _key(request, principal, key, payload),
            recorded,
            render=render if one_statement else None,
        )
    )
    return respond(answer)


def _gave_way(exc: BaseException) -> bool:
    return isinstance(translate(exc), TransactionLost)


async def _given_way(call: Callable[[], Awaitable[Answer]]) -> Answer:
    """``call``, run again (up to ``GIVE_WAY_RETRIES`` times) when PostgreSQL rolled its
    transaction back to break a conflict with a concurrent one: all of it was undone,
    so running it again is safe, and the client should not see a 500 for a race that
    the server can settle itself (D-491). Past the retries the error goes on to the
    catch-all, which answers 503 with Retry-After."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(_gave_way),
        stop=stop_after_attempt(GIVE_WAY_RETRIES + 1),
        before_sleep=lambda rs: log.info(
            "http.transaction_retried",
            attempt=rs.attempt_number,
            error=type(rs.outcome.exception()).__name__ if rs.outcome else None,
        ),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("tenacity ends with a result or the last error")
