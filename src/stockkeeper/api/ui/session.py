"""The ops page's login: a server-side session, CSRF tokens, signed flash messages and
per-render form nonces.

The session cookie holds a random value (256 bits) and nothing else: never the admin
token. PostgreSQL holds its SHA-256 with the token's fingerprint and an expiry
(``ui_session``, D-464), so every replica knows the session, logout ends it for good
(a copy of the cookie taken before is no session after), it ends at its expiry
(:data:`SESSION_TTL_S`, on the database's clock) whatever the browser keeps, and it
ends when its token is removed from ``api.tokens`` (or rotated out). A request costs
one primary-key lookup (each route calls :func:`current` once). The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it)
and ``Secure`` when the page is served over TLS.

Every POST carries a CSRF token in a hidden field as well: after login, an HMAC of
the session's value keyed by the session's token (so it is the session's own, and
dies with it); on the login form itself, a random value also set as a cookie (double
submit). A flash message after a redirect carries an HMAC of its text and the session,
so a link made elsewhere shows nothing (D-466); each rendered form carries a random
nonce that becomes the Idempotency-Key of what it asks for (D-465).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from stockkeeper.api.auth import Principal, TokenBook
from stockkeeper.services.ui_sessions import UiSessions

COOKIE = "sk_admin"
LOGIN_CSRF_COOKIE = "sk_login_csrf"
PATH = "/admin/ui"
MAX_FORM_BYTES = 64 * 1024
SESSION_TTL_S = 8 * 3600
_CSRF_LABEL = b"stockkeeper ops page csrf v2"
_FLASH_LABEL = b"stockkeeper ops page flash v1"
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _mac(token: str, label: bytes, *parts: str) -> str:
    msg = b"|".join([label, *(p.encode() for p in parts)])
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in admin: the cookie's value, the token behind it, who it is."""

    value: str
    token: str
    who: Principal

    @property
    def csrf(self) -> str:
        """This session's CSRF token: only a holder of the admin token can make it."""
        return _mac(self.token, _CSRF_LABEL, self.value)

    def csrf_ok(self, form: dict[str, str]) -> bool:
        return hmac.compare_digest(self.csrf, form.get("csrf", ""))

    def flash_sig(self, text: str) -> str:
        """The signature of a flash message shown to this session (and no other)."""
        return _mac(self.token, _FLASH_LABEL, self.value, text)[:32]

    def flash(self, text: str | None, sig: str | None) -> str | None:
        """``text`` if this session signed it, else None (a link made elsewhere)."""
        if not text or not sig:
            return None
        return text if hmac.compare_digest(self.flash_sig(text), sig) else None


async def current(request: Request, book: TokenBook, sessions: UiSessions) -> Session | None:
    """The admin behind the session cookie, or None (no cookie, no such session,
    expired, logged out, a token no longer configured, not an admin): one lookup."""
    value = request.cookies.get(COOKIE, "")
    if not value:
        return None
    fingerprint = await sessions.find(value)
    token = book.token_for(fingerprint) if fingerprint else None
    who = book.lookup(token) if token else None
    if token is None or who is None or "admin" not in who.scopes:
        return None
    return Session(value, token, who)


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def login_csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = form.get("csrf", "")
    return bool(cookie) and hmac.compare_digest(cookie, sent)


def new_form_nonce() -> str:
    """A rendered page's nonce: its forms send it back, and it keys what they ask for."""
    return secrets.token_urlsafe(16)


def form_nonce(form: dict[str, str]) -> str | None:
    """The form's nonce, if it has a well-formed one."""
    nonce = form.get("nonce", "")
    return nonce if _NONCE.fullmatch(nonce) else None


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int | None = None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        secure=_secure(request),
        samesite="strict",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=PATH, httponly=True, secure=_secure(request), samesite="strict"
    )


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the body limit applies first):
    the first value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}
