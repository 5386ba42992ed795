"""RFC 9457 problem documents with stable ``type`` slugs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response

from stockkeeper.domain.errors import DomainError

PROBLEM_TYPE = "application/problem+json"


def request_path(request: Request) -> str:
    """``request.url.path``, without building the URL: Starlette parses the Host
    header, assembles the whole URL and splits it again only to give back the scope's
    path with ``?``, ``#`` and ``\\`` escaped, about 6 µs a request (D-403)."""
    path: str = request.scope["path"]
    return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


# What RFC 3986 lets a path segment hold unescaped, and "/" between segments.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
_SEGMENT_SAFE = _PATH_SAFE.replace("/", "")


def problem_instance(scope: Mapping[str, Any]) -> str:
    """The request's path as a problem's ``instance``: a URI reference (RFC 9457
    section 3.1.5), so percent-encoded (UTF-8) as a Location header is. An id in any
    script, or with a space, ``?``, ``#`` or a character we refuse, is ASCII there and
    never a raw line break (D-397). Only on the error path: ``quote`` costs a few µs.

    Segment by segment from the path as sent (``raw_path``) when the server gives it,
    so an id holding ``/`` keeps it as ``%2F``, as the Location header writes it: the
    decoded path no longer says which slashes were the id's (D-481)."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return quote(scope["path"], safe=_PATH_SAFE)
    segments = raw.split(b"?", 1)[0].split(b"/")
    return "/".join(
        quote(unquote_to_bytes(seg).decode("utf-8", "replace"), safe=_SEGMENT_SAFE)
        for seg in segments
    )


TITLES = {
    "insufficient-stock": "Insufficient stock",
    "reservation-expired": "Reservation expired",
    "conflict": "Conflict",
    "not-found": "Not found",
    "validation": "Invalid request",
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "rate-limited": "Too many requests",
    "unavailable": "Service unavailable",
    "payload-too-large": "Payload too large",
    "method-not-allowed": "Method not allowed",
    "internal": "Internal error",
}

STATUS_FOR_SLUG = {
    "insufficient-stock": 409,
    "reservation-expired": 409,
    "conflict": 409,
    "not-found": 404,
    "validation": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "rate-limited": 429,
    "unavailable": 503,
    "payload-too-large": 413,
    "method-not-allowed": 405,
    "internal": 500,
}


class JSONResponse(StarletteJSONResponse):
    """JSON written by orjson. A JSONResponse to FastAPI, so the OpenAPI shows each
    route's response model as its 2xx schema."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_TYPE


class ApiProblem(Exception):
    """Raised by the HTTP layer for problems that are not domain errors."""

    def __init__(
        self, slug: str, detail: str, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.headers = headers
        self.extensions = extensions

    @classmethod
    def invalid(cls, field: str | None, message: str) -> ApiProblem:
        """A 422 ``validation`` problem naming the input at fault, as FastAPI's own do."""
        return cls("validation", message, errors=[{"field": field, "message": message}])


def problem_doc(
    slug: str, detail: str, instance: str | None = None, **extensions: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": slug,
        "title": TITLES.get(slug, slug),
        "status": STATUS_FOR_SLUG.get(slug, 500),
        "detail": detail,
    }
    if instance:
        doc["instance"] = instance
    doc.update(extensions)
    if slug == "validation" and "errors" not in doc:
        # Every 422 lists what is wrong in ``errors``, whichever layer refused it (D-390).
        doc["errors"] = [{"field": None, "message": detail}]
    return doc


def domain_problem(exc: DomainError, instance: str | None = None) -> tuple[int, dict[str, Any]]:
    doc = problem_doc(exc.slug, exc.detail, instance, **exc.extensions())
    return doc["status"], doc


def problem(
    slug: str,
    detail: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    doc = problem_doc(slug, detail, instance, **extensions)
    return ProblemResponse(doc, status_code=doc["status"], headers=headers)


NOT_JSON = "the body must be JSON, sent with Content-Type: application/json"


def plain(err: Any) -> str:
    """A pydantic error's message without the "Value error, " our own rules' messages
    get (``must not contain U+200B ...``, not ``Value error, must not contain ...``)."""
    message = str(err.get("msg", "invalid"))
    return message.removeprefix("Value error, ") if err.get("type") == "value_error" else message


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        message = plain(err)
        if loc == ["body"] and isinstance(err.get("input"), bytes):
            # FastAPI parses a body as JSON only under a JSON Content-Type (none, or
            # curl -d's form type, leaves it bytes); say that, not "a valid dictionary".
            message = NOT_JSON
        elif err.get("type") == "json_invalid" and loc[:1] == ["body"]:
            # FastAPI puts the offset of the syntax error in the location (body.19),
            # which reads as a field named "19": the field is the body (D-468).
            # The parser's reason may end where its position was cut off ("... at").
            reason = str((err.get("ctx") or {}).get("error") or message).removesuffix(" at")
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            loc, message = ["body"], f"not valid JSON{where}: {reason}"
        out.append({"field": ".".join(loc), "message": message})
    return out


def _unreadable(cause: BaseException | None) -> str:
    """Why a body could not be read, as a client can act on it."""
    if isinstance(cause, RecursionError):
        return "not valid JSON: nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 at byte {cause.start}"
    return "the body could not be read" + (f": {type(cause).__name__}" if cause else "")


def install(app: FastAPI) -> None:
    """Make every error of ``app`` a problem+json answer."""

    async def on_domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        status, doc = domain_problem(exc, problem_instance(request.scope))
        return ProblemResponse(doc, status_code=status)

    async def on_api_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return problem(
            exc.slug, exc.detail, problem_instance(request.scope), exc.headers, **exc.extensions
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem(
            "validation",
            "the request is not valid",
            problem_instance(request.scope),
            errors=_validation_errors(exc),
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug = {
            404: "not-found",
            405: "method-not-allowed",
            413: "payload-too-large",
            401: "unauthorized",
            403: "forbidden",
        }.get(exc.status_code, "validation")
        # Anything else FastAPI refuses while reading the body (not UTF-8, say) is a
        # validation problem: 422, so a type always comes with its usual status.
        extra: dict[str, Any] = {}
        if slug == "validation" and exc.status_code == 400:
            # What FastAPI's body reading raised, in words, on the field ``body``
            # (D-468's field for a body that is not JSON; D-483).
            extra["errors"] = [{"field": "body", "message": _unreadable(exc.__cause__)}]
        doc = problem_doc(slug, str(exc.detail), problem_instance(request.scope), **extra)
        return ProblemResponse(doc, status_code=doc["status"], headers=exc.headers)

    app.add_exception_handler(DomainError, on_domain)
    app.add_exception_handler(ApiProblem, on_api_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
