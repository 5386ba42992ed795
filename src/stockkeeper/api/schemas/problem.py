"""The problem+json body (RFC 9457) every error answers with, and the ``responses=`` of
a route that lists the errors it can answer, for the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    model_config = ConfigDict(extra="allow")


# What each error status means on our routes, for the OpenAPI document.
ERROR_STATUSES: dict[int, str] = {
    401: "No valid bearer token (or, on a webhook, no valid signature).",
    403: "The token lacks the scope this route needs.",
    404: "Nothing with that id.",
    409: "The request contradicts the current state (insufficient-stock, "
    "reservation-expired, conflict).",
    413: "The body is larger than the configured limit.",
    422: "The request is not valid (also an Idempotency-Key reused with another body); "
    "``errors`` names each field.",
    500: "An unexpected error; ``request_id`` is in the server's log line.",
    503: "The database is not reachable; try again after ``Retry-After`` seconds.",
}
# Every route that needs a token can answer these.
AUTHENTICATED = (401, 403, 500, 503)


def problems(*statuses: int, authenticated: bool = True) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status with the problem+json schema."""
    wanted = sorted({*statuses, *(AUTHENTICATED if authenticated else (500, 503))})
    # The model registers the Problem schema; api/common.py's OpenAPI hook files it under
    # application/problem+json, the media type these answers have.
    return {code: {"model": Problem, "description": ERROR_STATUSES[code]} for code in wanted}


def repeated(model: type[BaseModel], what: str) -> dict[int | str, dict[str, Any]]:
    """The 200 a write route answers a repeat with (the same order, the same
    reference_id), beside its 201 or 202, for the OpenAPI document."""
    return {200: {"model": model, "description": f"A repeat: {what}"}}
