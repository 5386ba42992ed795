"""The ops page over HTTP in process: the login cookie's attributes, CSRF refusals, and
every page rendering with real data (the browser test drives the same page end to end:
tests/e2e/test_ops_page.py)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stockkeeper.api.admin import create_admin_app
from stockkeeper.api.ui import session
from stockkeeper.bootstrap import Container
from stockkeeper.services.stock import Receipt
from stockkeeper.store import dead_letters
from tests.support import ADMIN_TOKEN, READER_TOKEN

UI = "/admin/ui"


@pytest.fixture
def config(
    config: dict[str, Any], broker_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("SHOP_HOOK_SECRET", "s3cret")
    config["broker"] = {"prefix": broker_prefix, "poll_ms": 50}
    config["connectors"] = [
        {"id": "wms-main", "type": "wms", "url": "http://127.0.0.1:9"},
        {"id": "mp", "type": "marketplace", "url": "http://127.0.0.1:9"},
        {
            "id": "shop",
            "type": "outbound_webhook",
            "url": "http://127.0.0.1:9/hook",
            "secret_env": "SHOP_HOOK_SECRET",
        },
    ]
    return config


@pytest.fixture
async def browser(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_admin_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
        yield c


def hidden_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, html
    return found.group(1)


async def log_in(c: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> httpx.Response:
    form = await c.get(f"{UI}/login")
    assert form.status_code == 200
    return await c.post(f"{UI}/login", data={"token": token, "csrf": hidden_csrf(form.text)})


async def test_the_page_needs_a_login_and_the_cookie_is_locked_down(
    browser: httpx.AsyncClient,
) -> None:
    r = await browser.get(UI)
    assert r.status_code == 303
    assert r.headers["location"] == f"{UI}/login"
    assert (await log_in(browser, READER_TOKEN)).status_code == 401  # not an admin
    r = await log_in(browser)
    assert r.status_code == 303
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("sk_admin="))
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= attrs
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in attrs  # plain HTTP here; over TLS the cookie is Secure
    page = await browser.get(UI)
    assert page.status_code == 200
    assert "Outbox" in page.text
    assert "Poll now" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_the_page_answers_head_as_it_answers_get(browser: httpx.AsyncClient) -> None:
    """`curl -I http://127.0.0.1:8081/admin/ui`, or an uptime checker, probes with HEAD."""
    r = await browser.head(UI)
    assert (r.status_code, r.headers["location"]) == (303, f"{UI}/login")
    login = await browser.head(f"{UI}/login")
    assert login.status_code == 200
    assert login.headers["content-type"].startswith("text/html")
    await log_in(browser)
    assert (await browser.head(UI)).status_code == 200


async def test_the_session_cookie_is_signed_and_never_holds_the_token(
    container: Container, browser: httpx.AsyncClient
) -> None:
    r = await log_in(browser)
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("sk_admin="))
    value = cookie.split(";")[0].removeprefix("sk_admin=").strip('"')
    assert ADMIN_TOKEN not in cookie
    assert f"max-age={session.SESSION_TTL_S}" in cookie.lower()
    assert (await browser.get(UI)).status_code == 200

    def with_cookie(v: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=create_admin_app(container))
        return httpx.AsyncClient(
            transport=transport, base_url="http://admin", cookies={"sk_admin": v}
        )

    fingerprint, expires, sig = value.split(".")
    forged = [
        ADMIN_TOKEN,  # the old format: the raw token is no longer a session
        f"{fingerprint}.{int(expires) + 3600}.{sig}",  # a longer life, same signature
        f"{fingerprint}.{expires}.{'0' * len(sig)}",  # a made-up signature
        session.session_value(ADMIN_TOKEN, now=time.time() - session.SESSION_TTL_S - 1),
        session.session_value(READER_TOKEN),  # signed, but not an admin's
    ]
    for v in forged:
        async with with_cookie(v) as c:
            r = await c.get(UI)
        assert r.status_code == 303, v
        assert r.headers["location"] == f"{UI}/login"


async def test_the_cookie_is_secure_over_tls(container: Container) -> None:
    transport = httpx.ASGITransport(app=create_admin_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="https://admin") as c:
        r = await log_in(c)
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("sk_admin="))
    assert "secure" in {a.strip().lower() for a in cookie.split(";")}


async def test_every_post_needs_the_csrf_token(
    container: Container, browser: httpx.AsyncClient
) -> None:
    # The login form itself: without the double-submit cookie's value it is refused.
    r = await browser.post(f"{UI}/login", data={"token": ADMIN_TOKEN, "csrf": "guess"})
    assert r.status_code == 403
    await log_in(browser)
    async with container.pool.acquire() as conn:
        dead_id = await dead_letters.record(
            conn,
            queue="wms.outbound",
            message_id=None,
            routing_key="inventory.allocated",
            body=b"{}",
            headers={},
            error="boom",
            attempts=3,
        )
    for path in (
        f"{UI}/dead-letters/{dead_id}/discard",
        f"{UI}/connectors/mp/poll",
        f"{UI}/wms/sync",
    ):
        refused = await browser.post(path, data={"csrf": "not-the-token", "reason": "x"})
        assert refused.status_code == 403, path
        missing = await browser.post(path, data={"reason": "x"})
        assert missing.status_code == 403, path
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM dead_letter") == "DEAD"
        assert await conn.fetchval("SELECT count(*) FROM poll_request") == 0
        assert await conn.fetchval("SELECT count(*) FROM wms_sync_request") == 0
    # With the page's token the same buttons act.
    csrf = hidden_csrf((await browser.get(UI)).text)
    done = await browser.post(f"{UI}/dead-letters/{dead_id}/discard", data={"csrf": csrf})
    assert done.status_code == 303
    assert (await browser.post(f"{UI}/connectors/mp/poll", data={"csrf": csrf})).status_code == 303
    page = (await browser.get(UI)).text
    assert f'id="dl-{dead_id}"' not in page
    assert 'id="poll-pending-mp"' in page


async def test_the_sku_pages_and_the_sync_fragment_render(
    container: Container, browser: httpx.AsyncClient
) -> None:
    await container.stock.receive(Receipt("JAM<1>", 4, "r-jam"))
    await log_in(browser)
    found = await browser.get(f"{UI}/skus", params={"prefix": "JAM"})
    assert found.status_code == 200
    assert "JAM&lt;1&gt;" in found.text  # escaped
    one = await browser.get(f"{UI}/skus/JAM%3C1%3E")
    assert one.status_code == 200
    assert "r-jam" in one.text
    assert "RECEIPT" in one.text
    assert (await browser.get(f"{UI}/skus/NOPE")).status_code == 404
    csrf = hidden_csrf((await browser.get(UI)).text)
    r = await browser.post(
        f"{UI}/wms/sync", data={"csrf": csrf, "reason": "check", "sku": "JAM<1>"}
    )
    assert r.status_code == 303
    fragment = await browser.get(f"{UI}/syncs")
    assert 'data-status="PENDING"' in fragment.text
    assert (await browser.get("/admin/ui/static/ops.js")).status_code == 200


async def test_a_channels_page_lists_its_skus_not_in_sync(
    container: Container, browser: httpx.AsyncClient
) -> None:
    async with container.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO channel_sync_state (channel, sku, desired_version, desired_quantity,"
            " pushed_version, status, last_error) VALUES"
            " ('shop', 'LATE', 3, 4, 2, 'PENDING', '503 from the channel'),"
            " ('shop', 'FINE', 2, 4, 2, 'SYNCED', NULL)"
        )
    await log_in(browser)
    main = await browser.get(UI)
    assert 'href="/admin/ui/channels/shop"' in main.text
    page = await browser.get(f"{UI}/channels/shop")
    assert page.status_code == 200
    assert "LATE" in page.text
    assert "503 from the channel" in page.text
    assert "FINE" not in page.text
    unlisted = await browser.get(f"{UI}/channels/shop", params={"state": "unlisted"})
    assert "Every SKU is in sync." in unlisted.text
    assert (await browser.get(f"{UI}/channels/nope")).status_code == 404


async def test_a_sku_with_a_slash_or_a_control_character_is_shown_or_refused(
    container: Container, browser: httpx.AsyncClient
) -> None:
    await container.stock.receive(Receipt("TEE/RED/M", 4, "r-tee"))
    await log_in(browser)
    found = await browser.get(f"{UI}/skus", params={"prefix": "TEE"})
    assert 'href="/admin/ui/skus/TEE%2FRED%2FM"' in found.text
    one = await browser.get(f"{UI}/skus/TEE%2FRED%2FM")
    assert one.status_code == 200, one.text
    assert "r-tee" in one.text
    # What the API's fields refuse (docs/http.md, "Ids") the page refuses too, with its
    # own page: never the database's error as a 500.
    for path, params in (
        (f"{UI}/skus", {"prefix": "TEE\x00"}),
        (f"{UI}/skus", {"after": "\x00"}),
        (f"{UI}/skus/A%00B", {}),
        (f"{UI}/channels/shop", {"after": "\x00"}),
    ):
        r = await browser.get(path, params=params)
        assert r.status_code == 422, (path, params, r.text)
        assert "U+0000" in r.text
