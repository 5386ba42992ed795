"""Bearer tokens with scopes, from the configuration."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from stockkeeper.api.problems import ApiProblem
from stockkeeper.config import ConfigError, Settings

ALL_SCOPES = frozenset({"inventory:read", "inventory:write", "admin"})
TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]


class TokenBook:
    """Known tokens by their SHA-256, so lookups do not leak timing of the secret."""

    def __init__(self, tokens: dict[str, Principal]) -> None:
        self._by_hash = {self._digest(t): p for t, p in tokens.items()}
        # For the ops page's session cookie, which names a token by its fingerprint
        # (a prefix of its SHA-256, which does not reveal it) instead of carrying it.
        self._by_fingerprint = {self.fingerprint(t): t for t in tokens}

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    @classmethod
    def fingerprint(cls, token: str) -> str:
        """A public name for a token: 16 bytes of its SHA-256, in hex."""
        return cls._digest(token)[:16].hex()

    def token_for(self, fingerprint: str) -> str | None:
        """The token behind a fingerprint (for a session cookie's check), or None."""
        return self._by_fingerprint.get(fingerprint)

    def lookup(self, token: str) -> Principal | None:
        digest = self._digest(token)
        found: Principal | None = None
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def generated_admin_token(data_dir: Path) -> str:
    """With no tokens configured, an admin token made once and kept in the data dir.

    It is printed only when it is made, so a fresh install is never an open door.
    """
    try:
        return _kept_admin_token(data_dir)
    except OSError as exc:
        raise ConfigError(
            f"data_dir ({data_dir}): cannot keep the generated admin token there: {exc} "
            "(make it a writable directory, or configure api.tokens)"
        ) from None


def _kept_admin_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = "sk_" + secrets.token_urlsafe(32)
    # Written whole to a private file, then linked into place: processes starting
    # together (stockkeeper run for each service) agree on one token, and none reads a
    # half-written file.
    draft = data_dir / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    finally:
        draft.unlink()
    print(
        f"stockkeeper: no api.tokens configured; generated an admin token (kept in {path}):\n"
        f"  {token}",
        file=sys.stderr,
    )
    return token


def build_token_book(settings: Settings) -> TokenBook:
    tokens: dict[str, Principal] = {}
    for i, t in enumerate(settings.api.tokens):
        name = t.name or f"token-{i}"
        tokens[t.resolve()] = Principal(name, frozenset(t.scopes))
    if not tokens:
        tokens[generated_admin_token(settings.data_dir)] = Principal("generated-admin", ALL_SCOPES)
    return TokenBook(tokens)


# The OpenAPI securityScheme ("Authorize" in /docs). It reads nothing itself
# (auto_error=False): the token is checked by authenticate(), with our own answers.
BEARER = HTTPBearer(
    scheme_name="bearer",
    description="A token from api.tokens (or the generated admin token); its scopes "
    "(inventory:read, inventory:write, admin) decide which routes it may call.",
    auto_error=False,
)
_CREDENTIALS = Depends(BEARER)
# The request scope's key for the principals AuthenticatedRoute found, by scope.
_CHECKED = "stockkeeper.principals"


def authenticate(request: Request, scope: str) -> Principal:
    """The caller's principal from the Authorization header; 401 or 403 if it has none
    holding ``scope``. Reads headers only."""
    book: TokenBook = request.app.state.tokens
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(
            "unauthorized", "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    principal = book.lookup(token.strip())
    if principal is None:
        raise ApiProblem(
            "unauthorized",
            "the bearer token is not valid",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if scope not in principal.scopes:
        raise ApiProblem("forbidden", f"this token lacks the {scope} scope")
    return principal


class Require:
    """A FastAPI dependency: the caller's principal, which must hold ``scope``."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(
        self, request: Request, _: HTTPAuthorizationCredentials | None = _CREDENTIALS
    ) -> Principal:
        checked: dict[str, Principal] = request.scope.get(_CHECKED, {})
        return checked.get(self.scope) or authenticate(request, self.scope)


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, which must hold ``scope``."""
    return Require(scope)


def _scopes(dependant: Dependant) -> list[str]:
    found = [d.call.scope for d in dependant.dependencies if isinstance(d.call, Require)]
    for sub in dependant.dependencies:
        found += _scopes(sub)
    return found


class AuthenticatedRoute(APIRoute):
    """A route whose token is checked before its body is read or validated.

    FastAPI reads and parses the body before it solves dependencies, so without this an
    anonymous caller with a malformed body would learn about the fields (422) instead
    of getting 401, and would make us read its body first.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        scopes = _scopes(self.dependant)
        if not scopes:
            return handler

        async def authenticated(request: Request) -> Response:
            request.scope[_CHECKED] = {s: authenticate(request, s) for s in scopes}
            return await handler(request)

        return authenticated
