"""The ops page's login: a signed session cookie, and CSRF tokens.

The session cookie never carries the admin token. It holds the token's fingerprint (a
prefix of its SHA-256), an expiry and an HMAC of both keyed by the token, so only a
holder of the token can make one, a stolen cookie stops working at its expiry
(:data:`SESSION_TTL_S`) or when the token is removed from ``api.tokens``, and the
token itself is never written to the browser. The cookie is ``HttpOnly`` (no script
reads it), ``SameSite=Strict`` (no other site's page sends it) and ``Secure`` when the
page is served over TLS. Every POST carries a
CSRF token in a hidden field as well: after login, an HMAC of a fixed label keyed by the
session's token (every replica computes the same one, nothing is stored); on the login
form itself, a random value also set as a cookie (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from stockkeeper.api.auth import Principal, TokenBook

COOKIE = "sk_admin"
LOGIN_CSRF_COOKIE = "sk_login_csrf"
PATH = "/admin/ui"
_LABEL = b"stockkeeper ops page csrf v1"
MAX_FORM_BYTES = 64 * 1024
SESSION_TTL_S = 8 * 3600
_SESSION_LABEL = "stockkeeper ops page session v1"


def csrf_for(token: str) -> str:
    """The CSRF token of a session: only a holder of the admin token can make it."""
    return hmac.new(token.encode(), _LABEL, hashlib.sha256).hexdigest()


def _session_sig(token: str, fingerprint: str, expires: int) -> str:
    msg = f"{_SESSION_LABEL}|{fingerprint}|{expires}".encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def session_value(token: str, *, now: float | None = None) -> str:
    """The session cookie's value for ``token``: ``fingerprint.expires.signature``."""
    fingerprint = TokenBook.fingerprint(token)
    expires = int(time.time() if now is None else now) + SESSION_TTL_S
    return f"{fingerprint}.{expires}.{_session_sig(token, fingerprint, expires)}"


def session_token(request: Request, book: TokenBook, *, now: float | None = None) -> str | None:
    """The admin token behind a valid, unexpired session cookie, or None."""
    fingerprint, _, rest = request.cookies.get(COOKIE, "").partition(".")
    expires_s, _, sig = rest.partition(".")
    token = book.token_for(fingerprint) if fingerprint else None
    if token is None or not expires_s.isdigit():
        return None
    expires = int(expires_s)
    if expires <= (time.time() if now is None else now):
        return None
    if not hmac.compare_digest(_session_sig(token, fingerprint, expires), sig):
        return None
    return token


def principal(request: Request, book: TokenBook) -> Principal | None:
    """The admin behind the session cookie, or None (no cookie, unknown, not admin)."""
    token = session_token(request, book)
    if token is None:
        return None
    who = book.lookup(token)
    if who is None or "admin" not in who.scopes:
        return None
    return who


def csrf_ok(request: Request, book: TokenBook, form: dict[str, str]) -> bool:
    token = session_token(request, book)
    sent = form.get("csrf", "")
    return token is not None and hmac.compare_digest(csrf_for(token), sent)


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def login_csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = form.get("csrf", "")
    return bool(cookie) and hmac.compare_digest(cookie, sent)


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
