"""The ops page's routes (/admin/ui): the main page, the SKU search and a SKU's page,
the sync list fragment the page refreshes, and the forms' POSTs.

The page reads and acts through the admin API itself, in process (an ASGI call with the
session's token), so it shows exactly what the documented API answers and every button
goes through the same checks, idempotency and audit as a script would. A SKU's figures,
batches and ledger come from the stock service, which the admin API does not serve.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import jinja2
from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, RedirectResponse, Response

from stockkeeper.api import schemas
from stockkeeper.api.list_schemas import (
    ChannelSkuListOut,
    ChannelSkuOut,
    ReservationListOut,
    SkuListOut,
)
from stockkeeper.api.ui import session
from stockkeeper.api.ui.session import Session
from stockkeeper.config import ErpConnectorConfig, MarketplaceConnectorConfig
from stockkeeper.domain.errors import NotFound
from stockkeeper.domain.ids import printable, printable_part
from stockkeeper.messaging.broker import BrokerUnavailable
from stockkeeper.observability.logging import get_logger
from stockkeeper.services.listing import Listing
from stockkeeper.services.ui_sessions import UiSessions
from stockkeeper.store.errors import StoreUnavailable

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container

log = get_logger("stockkeeper.ui")

UI = session.PATH
STATIC = f"{UI}/static"
CHART_W, CHART_H = 320, 80
LAG_WINDOW_S = 3600

_HERE = resources.files("stockkeeper.api.ui")
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
    autoescape=jinja2.select_autoescape(["html"], default=True),
    undefined=jinja2.StrictUndefined,
)


def _render(name: str, code: int = 200, **values: Any) -> HTMLResponse:
    html = _ENV.get_template(name).render(static=STATIC, ui=UI, **values)
    return HTMLResponse(
        html,
        status_code=code,
        headers={
            "Cache-Control": "no-store",
            # Everything is ours: no inline script, no frame, no outside origin.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def _to_login() -> Response:
    return RedirectResponse(f"{UI}/login", status_code=303)


def _back(to: str = UI) -> Response:
    return RedirectResponse(to, status_code=303)


def _path(*parts: str) -> str:
    return "".join("/" + quote(p, safe="") for p in parts)


def _refused(**values: str) -> str | None:
    """What is wrong with the first of ``values`` that no id may hold, or None."""
    for name, value in values.items():
        check = printable if name == "sku" else printable_part
        try:
            check(value)
        except ValueError as exc:
            return f"{name}: {exc}"
    return None


def sku_href(sku: str) -> str:
    """A SKU's page, its every character percent-encoded ("/" too, so the path is one
    segment however the SKU is written)."""
    return f"{UI}/skus/{quote(sku, safe='')}"


_ENV.filters["sku_href"] = sku_href


def lag_chart(points: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """Inline SVG of an hour of lag buckets: a p50 and a p99 line, a dot per bucket."""
    start = now - timedelta(seconds=LAG_WINDOW_S)
    top = max([p["p99_ms"] for p in points] + [1.0])
    dots: list[tuple[float, float, float]] = []
    for p in points:
        at = datetime.fromisoformat(p["at"])
        x = max(0.0, min(CHART_W, (at - start).total_seconds() / LAG_WINDOW_S * CHART_W))
        dots.append(
            (
                round(x, 1),
                round(CHART_H - p["p50_ms"] / top * (CHART_H - 6) - 2, 1),
                round(CHART_H - p["p99_ms"] / top * (CHART_H - 6) - 2, 1),
            )
        )
    return {
        "p50": " ".join(f"{x},{y}" for x, y, _ in dots),
        "p99": " ".join(f"{x},{y}" for x, _, y in dots),
        "dots": dots,
        "top_ms": top,
        "n": len(points),
    }


def dead_per_queue(depths: dict[str, int], dead: dict[str, int]) -> dict[str, int]:
    """Open dead letters beside each broker queue (whose name carries the prefix)."""
    return {
        name: n
        for name in depths
        for queue, n in dead.items()
        if name == queue or name.endswith("." + queue)
    }


def add_ui_routes(app: FastAPI, container: Container, listing: Listing) -> None:
    app.mount(STATIC, StaticFiles(directory=str(_HERE / "static")), name="ui-static")
    book = container.tokens
    sessions = UiSessions(container.pool)
    polled = {
        c.id: c.type
        for c in container.settings.connectors
        if isinstance(c, ErpConnectorConfig | MarketplaceConnectorConfig)
    }

    async def current(request: Request) -> Session | None:
        return await session.current(request, book, sessions)

    def api(request: Request, s: Session) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=request.app),
            base_url="http://admin-ui.internal",
            headers={"Authorization": f"Bearer {s.token}"},
            timeout=30,
        )

    async def get_json(request: Request, s: Session, path: str, **params: Any) -> Any:
        async with api(request, s) as client:
            r = await client.get(path, params=params)
        if r.status_code == 503:
            # What the API could not reach, the page cannot either: the same 503
            # `unavailable` with Retry-After (CatchAll), not a 500 of the page.
            detail = str(r.json().get("detail", "")) if r.content else ""
            if "broker" in detail:
                raise BrokerUnavailable(f"{path}: {detail}")
            raise StoreUnavailable(f"{path}: {detail or 'unavailable'}")
        r.raise_for_status()
        return r.json()

    def page(s: Session, name: str, code: int = 200, **values: Any) -> HTMLResponse:
        # A nonce per render: a double submit of one of its forms asks once (D-465).
        return _render(name, code, csrf=s.csrf, nonce=session.new_form_nonce(), who=s.who, **values)

    # -- login -------------------------------------------------------------------------

    # HEAD too on the two entry points, as on /healthz (D-393): `curl -I` and uptime
    # checkers probe the page with it.
    @app.api_route(f"{UI}/login", methods=["GET", "HEAD"], include_in_schema=False)
    async def login_form(request: Request) -> Response:
        nonce = session.new_login_csrf()
        resp = _render("login.html", csrf=nonce, error=None)
        session.set_cookie(request, resp, session.LOGIN_CSRF_COOKIE, nonce)
        return resp

    @app.post(f"{UI}/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await session.read_form(request)
        if not session.login_csrf_ok(request, form):
            return _render("login.html", 403, csrf="", error="The form expired; reload it.")
        token = form.get("token", "").strip()
        who = book.lookup(token) if token else None
        if who is None or "admin" not in who.scopes:
            log.warning("ui.login_refused", known_token=who is not None)
            nonce = session.new_login_csrf()
            refused = _render("login.html", 401, csrf=nonce, error="Not an admin token.")
            session.set_cookie(request, refused, session.LOGIN_CSRF_COOKIE, nonce)
            return refused
        log.info("ui.login", principal=who.name)
        if old := request.cookies.get(session.COOKIE):
            await sessions.close(old)  # this browser's previous session, if any
        value = await sessions.open(book.fingerprint(token), who.name, session.SESSION_TTL_S)
        resp = _back()
        session.set_cookie(request, resp, session.COOKIE, value, max_age=session.SESSION_TTL_S)
        session.clear_cookie(request, resp, session.LOGIN_CSRF_COOKIE)
        return resp

    @app.post(f"{UI}/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        form = await session.read_form(request)
        s = await current(request)
        if s is None or not s.csrf_ok(form):
            return _to_login()
        # Ended in the database: a copy of the cookie is no session either (D-464).
        await sessions.close(s.value)
        log.info("ui.logout", principal=s.who.name)
        resp = _to_login()
        session.clear_cookie(request, resp, session.COOKIE)
        return resp

    # -- pages -------------------------------------------------------------------------

    async def syncs(request: Request, s: Session) -> list[dict[str, Any]]:
        doc = await get_json(request, s, "/admin/wms/sync", limit=10)
        items: list[dict[str, Any]] = doc["items"]
        return items

    @app.api_route(UI, methods=["GET", "HEAD"], include_in_schema=False)
    async def index(request: Request) -> Response:
        s = await current(request)
        if s is None:
            return _to_login()
        status = await get_json(request, s, "/admin/status")
        dead = await get_json(request, s, "/admin/dead-letters", limit=50)
        lag = await get_json(request, s, "/admin/channels/lag", window_s=LAG_WINDOW_S, bucket_s=60)
        now = container.clock()
        charts = {ch: lag_chart(points, now) for ch, points in lag["channels"].items()}
        pending = await listing.pending_polls()
        return page(
            s,
            "index.html",
            status=status,
            dead=dead["items"],
            more_dead=dead["next"],
            dead_by_queue=dead_per_queue(status.get("queues") or {}, status["dead_letters"]),
            charts=charts,
            chart_w=CHART_W,
            chart_h=CHART_H,
            polled=polled,
            pending={k: v.requested_at.isoformat() for k, v in pending.items()},
            syncs=await syncs(request, s),
            wms_connectors=sorted(status.get("wms", {}).keys()),
            # Only a message this session signed: never a link's own text (D-466).
            message=s.flash(request.query_params.get("m"), request.query_params.get("ms")),
        )

    @app.get(f"{UI}/syncs", include_in_schema=False)
    async def syncs_fragment(request: Request) -> Response:
        s = await current(request)
        if s is None:
            return Response(status_code=401)
        return page(s, "syncs.html", syncs=await syncs(request, s))

    @app.get(f"{UI}/skus", include_in_schema=False)
    async def sku_search(request: Request) -> Response:
        s = await current(request)
        if s is None:
            return _to_login()
        prefix = request.query_params.get("prefix", "")[:128]
        sold_out = request.query_params.get("sold_out") == "1"
        short = request.query_params.get("short") == "1"
        after = request.query_params.get("after") or None
        # The page calls the listing itself, so it checks what the API's fields check
        # (docs/http.md, "Ids"): a control character is refused, not sent to the database.
        refused = _refused(prefix=prefix, after=after or "")
        if refused:
            return page(s, "error.html", 422, error=refused)
        found = await listing.skus(
            prefix=prefix,
            after=after,
            unavailable_only=sold_out,
            shortfall_only=short,
            limit=50,
        )
        return page(
            s,
            "skus.html",
            prefix=prefix,
            sold_out=sold_out,
            short=short,
            result=schemas.as_json(SkuListOut.of(found)),
        )

    # {sku:path}: a SKU may hold "/" (TEE/RED/M), which arrives decoded (D-448, D-451).
    @app.get(UI + "/skus/{sku:path}", include_in_schema=False)
    async def sku_page(request: Request, sku: str) -> Response:
        s = await current(request)
        if s is None:
            return _to_login()
        refused = _refused(sku=sku)
        if refused:
            return page(s, "error.html", 422, error=refused)
        try:
            stock = schemas.as_json(schemas.StockOut.of(await container.stock.get(sku)))
            ledger = schemas.as_json(
                schemas.LedgerOut.of(await container.stock.ledger(sku, 0, 200))
            )
        except NotFound:
            return page(s, "sku.html", 404, sku=sku, stock=None)
        held = await listing.reservations(sku=sku, limit=100)
        return page(
            s,
            "sku.html",
            sku=sku,
            stock=stock,
            ledger=ledger,
            reservations=schemas.as_json(ReservationListOut.of(held))["items"],
        )

    @app.get(UI + "/channels/{channel}", include_in_schema=False)
    async def channel_page(request: Request, channel: str) -> Response:
        s = await current(request)
        if s is None:
            return _to_login()
        state = request.query_params.get("state", "all")
        if state not in ("all", "pending", "unlisted", "failing"):
            state = "all"
        after = request.query_params.get("after") or None
        refused = _refused(after=after or "")
        if refused:
            return page(s, "error.html", 422, error=refused)
        try:
            found = await listing.channel_skus(channel, state=state, after=after, limit=100)
        except NotFound:
            return page(s, "channel.html", 404, channel=channel, result=None)
        result = ChannelSkuListOut(
            channel=channel, items=[ChannelSkuOut.of(c) for c in found.items], next=found.next
        )
        return page(
            s,
            "channel.html",
            channel=channel,
            state=state,
            result=schemas.as_json(result),
        )

    # -- actions -----------------------------------------------------------------------

    def form_key(nonce: str, path: str, body: dict[str, Any] | None) -> str:
        """The Idempotency-Key of what a form asks: its render's nonce and the request
        (D-465). A double submit of one form is the same key and body, so the API acts
        once and answers the second as it answered the first; another form of the same
        render, or the same form sent again with other fields, asks for something else."""
        asked = json.dumps([path, body], sort_keys=True, separators=(",", ":"))
        return f"ops-page.{nonce}.{hashlib.sha256(asked.encode()).hexdigest()[:32]}"

    async def act(
        request: Request, s: Session, nonce: str, path: str, body: dict[str, Any] | None = None
    ) -> str:
        """POST to the admin API, once per form (``nonce``); a short message for the page."""
        headers = {"Idempotency-Key": form_key(nonce, path, body)}
        async with api(request, s) as client:
            r = await client.post(path, json=body, headers=headers)
        if r.status_code >= 400:
            detail = r.json().get("detail", r.text) if r.content else r.reason_phrase
            return f"{r.status_code}: {detail}"
        return ""

    async def guarded(request: Request) -> tuple[dict[str, str], Session, str] | Response:
        """The form, its session and its render's nonce, if the session and its CSRF
        token are good and the form has a nonce; else the answer (to the login page,
        403, or 400 for a form from before the nonces)."""
        form = await session.read_form(request)
        s = await current(request)
        if s is None:
            return _to_login()
        if not s.csrf_ok(form):
            return _render("error.html", 403, error="CSRF token missing or wrong.")
        nonce = session.form_nonce(form)
        if nonce is None:
            return _render("error.html", 400, error="The form is out of date; reload the page.")
        return form, s, nonce

    def done(s: Session, message: str, ok: str) -> Response:
        """Back to the page with a flash message only this session can show (D-466)."""
        text = message or ok
        return _back(f"{UI}?m={quote(text)}&ms={s.flash_sig(text)}")

    @app.post(UI + "/dead-letters/{dead_letter_id}/{action}", include_in_schema=False)
    async def dead_letter_action(request: Request, dead_letter_id: int, action: str) -> Response:
        checked = await guarded(request)
        if isinstance(checked, Response):
            return checked
        _, s, nonce = checked
        if action not in ("replay", "discard"):
            return _render("error.html", 404, error="No such action.")
        msg = await act(request, s, nonce, f"/admin/dead-letters/{dead_letter_id}/{action}")
        return done(s, msg, f"dead letter {dead_letter_id}: {action} done")

    @app.post(UI + "/connectors/{connector}/poll", include_in_schema=False)
    async def poll_now(request: Request, connector: str) -> Response:
        checked = await guarded(request)
        if isinstance(checked, Response):
            return checked
        _, s, nonce = checked
        msg = await act(request, s, nonce, f"/admin/connectors{_path(connector)}/poll")
        return done(s, msg, f"{connector}: poll requested")

    @app.post(f"{UI}/wms/sync", include_in_schema=False)
    async def force_sync(request: Request) -> Response:
        checked = await guarded(request)
        if isinstance(checked, Response):
            return checked
        form, s, nonce = checked
        body: dict[str, Any] = {
            "reason": form.get("reason", "").strip() or "ops page",
            "requested_by": s.who.name,
        }
        for key in ("sku", "connector"):
            if form.get(key, "").strip():
                body[key] = form[key].strip()
        if form.get("priority") in ("low", "normal", "high"):
            body["priority"] = form["priority"]
        msg = await act(request, s, nonce, "/admin/wms/sync", body)
        return done(s, msg, "WMS sync requested")
