"""Bearer tokens with scopes, from the configuration."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from stockkeeper.api.problems import ApiProblem
from stockkeeper.config import Settings

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

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

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


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, which must hold ``scope``."""

    async def dependency(request: Request) -> Principal:
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

    return dependency
