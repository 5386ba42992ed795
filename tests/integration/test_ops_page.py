"""The ops page over HTTP in process: the login cookie's attributes, CSRF refusals, and
every page rendering with real data (the browser test drives the same page end to end:
tests/e2e/test_ops_page.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from stockkeeper.api.admin import create_admin_app
from stockkeeper.api.ui import session
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.services.stock import Receipt
from stockkeeper.store import dead_letters
from tests.conftest import FakeClock
from tests.support import ADMIN_TOKEN, READER_TOKEN, TOKENS

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


def hidden(html: str, name: str) -> str:
    """The first hidden field ``name`` of a page (every form of a render has the same)."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, html
    return found.group(1)


def hidden_csrf(html: str) -> str:
    return hidden(html, "csrf")


async def form_of(c: httpx.AsyncClient, **fields: str) -> dict[str, str]:
    """A freshly rendered page's form fields: its CSRF token and nonce, and ``fields``."""
    html = (await c.get(UI)).text
    return {"csrf": hidden(html, "csrf"), "nonce": hidden(html, "nonce"), **fields}


def with_cookie(container: Container, value: str) -> httpx.AsyncClient:
    """A browser holding a copy of a session cookie, talking to an admin app of its
    own (another replica of admin-api on the same database)."""
    transport = httpx.ASGITransport(app=create_admin_app(container))
    return httpx.AsyncClient(
        transport=transport, base_url="http://admin", cookies={session.COOKIE: value}
    )


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


async def test_the_session_cookie_is_random_and_never_holds_the_token(
    container: Container, browser: httpx.AsyncClient, config: dict[str, Any], clock: FakeClock
) -> None:
    r = await log_in(browser)
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("sk_admin="))
    value = cookie.split(";")[0].removeprefix("sk_admin=").strip('"')
    assert ADMIN_TOKEN not in cookie
    assert len(value) >= 43  # 256 random bits
    assert f"max-age={session.SESSION_TTL_S}" in cookie.lower()
    assert (await browser.get(UI)).status_code == 200
    async with container.pool.acquire() as conn:
        # Only its SHA-256 is kept: a read of the table gives no cookie.
        stored = await conn.fetchval("SELECT id_hash FROM ui_session")
        assert value.encode() not in bytes(stored)
        life = await conn.fetchval("SELECT expires_at - created_at FROM ui_session")
    assert life.total_seconds() == session.SESSION_TTL_S
    async with with_cookie(container, value) as c:
        assert (await c.get(UI)).status_code == 200  # any replica knows it
    fingerprint = container.tokens.fingerprint(ADMIN_TOKEN)
    forged = [
        ADMIN_TOKEN,  # the raw token is no session
        f"{fingerprint}.9999999999.{'0' * 64}",  # the signed format of before (D-464)
        value[:-1] + ("A" if value[-1] != "A" else "B"),  # one character off
        "",
    ]
    for v in forged:
        async with with_cookie(container, v) as c:
            r = await c.get(UI)
        assert r.status_code == 303, v
        assert r.headers["location"] == f"{UI}/login"
    # The admin token rotated out of api.tokens (a replica started with the new config):
    # its sessions end with it.
    rotated = {**config, "api": {**config["api"], "tokens": [{**TOKENS[0], "token": "new-" * 8}]}}
    other = await build(Settings.model_validate(rotated), clock=clock)
    try:
        transport = httpx.ASGITransport(app=create_admin_app(other))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://admin", cookies={session.COOKIE: value}
        ) as c:
            r = await c.get(UI)
        assert (r.status_code, r.headers["location"]) == (303, f"{UI}/login")
    finally:
        await other.close()


async def test_logout_ends_the_session_for_every_copy_of_its_cookie(
    container: Container, browser: httpx.AsyncClient
) -> None:
    await log_in(browser)
    value = browser.cookies[session.COOKIE]
    form = await form_of(browser, reason="after logout")
    async with with_cookie(container, value) as copy:
        # The copy works while the session is open, on another replica too.
        assert (await copy.get(UI)).status_code == 200
        out = await browser.post(f"{UI}/logout", data={"csrf": form["csrf"]})
        assert (out.status_code, out.headers["location"]) == (303, f"{UI}/login")
        assert session.COOKIE not in browser.cookies
        # After the logout the copy is no session anywhere: the page sends it to the
        # login form, the fragment is 401, and a form it kept acts no more.
        r = await copy.get(UI)
        assert (r.status_code, r.headers["location"]) == (303, f"{UI}/login")
        assert (await copy.get(f"{UI}/syncs")).status_code == 401
        acted = await copy.post(f"{UI}/wms/sync", data=form)
        assert (acted.status_code, acted.headers["location"]) == (303, f"{UI}/login")
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ui_session") == 0
        assert await conn.fetchval("SELECT count(*) FROM wms_sync_request") == 0


async def test_a_session_ends_at_its_expiry_on_the_databases_clock(
    container: Container, browser: httpx.AsyncClient
) -> None:
    await log_in(browser)
    assert (await browser.get(UI)).status_code == 200
    async with container.pool.acquire() as conn:
        await conn.execute("UPDATE ui_session SET expires_at = now() - interval '1 second'")
    # The browser still sends the cookie (its Max-Age has not run out): no session.
    assert session.COOKIE in browser.cookies
    r = await browser.get(UI)
    assert (r.status_code, r.headers["location"]) == (303, f"{UI}/login")
    # The next login, from any browser, deletes the expired row.
    transport = httpx.ASGITransport(app=create_admin_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as other:
        await log_in(other)
        assert (await other.get(UI)).status_code == 200
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ui_session WHERE expires_at <= now()") == 0
        assert await conn.fetchval("SELECT count(*) FROM ui_session") == 1


async def test_a_double_submit_of_a_form_asks_once_and_answers_alike(
    container: Container, browser: httpx.AsyncClient
) -> None:
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
    await log_in(browser)
    sync = await form_of(browser, reason="double click", priority="high")
    # A double click: two POSTs of the same rendered form, the second while the first
    # still runs; then a third click once the first answered.
    first, second = await asyncio.gather(
        browser.post(f"{UI}/wms/sync", data=sync), browser.post(f"{UI}/wms/sync", data=sync)
    )
    third = await browser.post(f"{UI}/wms/sync", data=sync)
    assert first.status_code == second.status_code == third.status_code == 303
    assert first.headers["location"] == second.headers["location"] == third.headers["location"]
    assert "WMS sync requested" in (await browser.get(first.headers["location"])).text
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM wms_sync_request") == 1
    replay = await form_of(browser)
    answers = [
        await browser.post(f"{UI}/dead-letters/{dead_id}/replay", data=replay) for _ in range(2)
    ]
    # The second click answers as the first did ("replay done"), not "409: already
    # REPLAYED".
    assert answers[0].headers["location"] == answers[1].headers["location"]
    assert "replay done" in (await browser.get(answers[1].headers["location"])).text
    poll = await form_of(browser)
    polls = await asyncio.gather(
        *(browser.post(f"{UI}/connectors/mp/poll", data=poll) for _ in range(2))
    )
    assert polls[0].headers["location"] == polls[1].headers["location"]
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM wms_sync_request") == 1
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM domain_event WHERE event_type = 'wms.sync.force'"
            )
            == 1
        )
        assert await conn.fetchval("SELECT count(*) FROM poll_request") == 1
    # Another render is another nonce: asking again is a second sync request, and so is
    # the same render's form sent with other fields (not a double submit).
    again = await form_of(browser, reason="double click", priority="high")
    assert again["nonce"] != sync["nonce"]
    assert (await browser.post(f"{UI}/wms/sync", data=again)).status_code == 303
    edited = {**sync, "reason": "another reason"}
    assert (await browser.post(f"{UI}/wms/sync", data=edited)).status_code == 303
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM wms_sync_request") == 3
    # A form without a nonce (rendered before them) is refused, not run unguarded.
    stale = await browser.post(f"{UI}/wms/sync", data={"csrf": sync["csrf"], "reason": "x"})
    assert stale.status_code == 400
    assert "reload" in stale.text


async def test_a_flash_message_is_shown_only_as_the_page_wrote_it_for_this_session(
    container: Container, browser: httpx.AsyncClient
) -> None:
    await log_in(browser)
    spoof = "Stock corrupted, call +1 555 0100"
    r = await browser.get(UI, params={"m": spoof})
    assert r.status_code == 200
    assert "Stock corrupted" not in r.text
    assert 'id="flash"' not in r.text
    # What the page writes after an action is shown as before, error details included.
    done = await browser.post(f"{UI}/wms/sync", data=await form_of(browser, reason="flash"))
    link = done.headers["location"]
    shown = await browser.get(link)
    assert re.search(r'id="flash">WMS sync requested<', shown.text), shown.text
    missing = await browser.post(f"{UI}/dead-letters/424242/replay", data=await form_of(browser))
    refused = await browser.get(missing.headers["location"])
    assert re.search(r'id="flash">404: [^<]*424242', refused.text), refused.text
    # The page's own link with other text, and the link in another session, show nothing.
    parts = urlsplit(link)
    signed = {k: v[0] for k, v in parse_qs(parts.query).items()}
    forged = await browser.get(f"{UI}?{urlencode({**signed, 'm': spoof})}")
    assert "Stock corrupted" not in forged.text
    assert 'id="flash"' not in forged.text
    transport = httpx.ASGITransport(app=create_admin_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as other:
        await log_in(other)
        elsewhere = await other.get(link)
    assert elsewhere.status_code == 200
    assert 'id="flash"' not in elsewhere.text


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
    form = await form_of(browser)
    done = await browser.post(f"{UI}/dead-letters/{dead_id}/discard", data=form)
    assert done.status_code == 303
    assert (await browser.post(f"{UI}/connectors/mp/poll", data=form)).status_code == 303
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
    r = await browser.post(
        f"{UI}/wms/sync", data=await form_of(browser, reason="check", sku="JAM<1>")
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
