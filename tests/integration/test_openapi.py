"""Both apps' OpenAPI documents: every 2xx answer's real schema from its model; the
document valid; bearer auth, Idempotency-Key and problem+json errors on every route
that has them; /docs and /redoc served without a CDN."""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate

from stockkeeper.api.admin import create_admin_app
from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container

PLAIN_STRING = {"type": "string"}


def success_schemas(app: FastAPI) -> dict[str, Any]:
    found = {}
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            for status, answer in op["responses"].items():
                if status.startswith("2"):
                    schema = answer.get("content", {}).get("application/json", {}).get("schema")
                    found[f"{method.upper()} {path} {status}"] = schema
    return found


@pytest.mark.parametrize("create", [create_inventory_app, create_admin_app])
async def test_every_2xx_answer_has_a_real_schema(container: Container, create: Any) -> None:
    schemas = success_schemas(create(container))
    assert schemas
    plain = {route: s for route, s in schemas.items() if not s or s == PLAIN_STRING}
    assert plain == {}


@pytest.mark.parametrize("create", [create_inventory_app, create_admin_app])
async def test_no_2xx_answer_is_an_untyped_object(container: Container, create: Any) -> None:
    """Each 2xx answer names a model whose members are declared (no bare object, no
    free-form dict at the top), so the document tells a client what it gets."""
    app = create(container)
    components = app.openapi()["components"]["schemas"]
    untyped = {}
    for route, schema in success_schemas(app).items():
        ref = schema.get("$ref", "")
        model = components.get(ref.rsplit("/", 1)[-1]) if ref else schema
        if not model or model.get("type") != "object" or not model.get("properties"):
            untyped[route] = schema
    assert untyped == {}


async def test_the_schemas_name_their_models(container: Container) -> None:
    schemas = success_schemas(create_inventory_app(container))
    ref = "#/components/schemas/"
    assert schemas["POST /inventory/reserve 201"] == {"$ref": f"{ref}ReservationOut"}
    assert schemas["POST /inventory/receipts 201"] == {"$ref": f"{ref}ReceiptOut"}
    assert schemas["GET /orders/{order_id} 200"] == {"$ref": f"{ref}OrderOut"}


# -- issue 17.4: /docs usable as shipped ------------------------------------------------

WEBHOOK = "/webhooks/{connector}"
IDEMPOTENT = {
    "/inventory/reserve",
    "/inventory/release",
    "/inventory/confirm",
    "/inventory/fulfil",
    "/inventory/receipts",
    "/inventory/adjustments",
    "/orders",
    "/orders/{order_id}/payment",
    "/orders/{order_id}/cancel",
    "/admin/wms/sync",
    "/admin/connectors/{connector}/poll",
    "/admin/dead-letters/{dead_letter_id}/replay",
    "/admin/dead-letters/{dead_letter_id}/discard",
}


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ms in doc["paths"].items() for m, op in ms.items()]


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    # One webhook connector, so POST /webhooks/{connector} is in the document.
    config["connectors"] = [
        {"id": "shop", "type": "webhook", "preset": "generic", "secret_env": "SK_TEST_SECRET"}
    ]
    return config


@pytest.fixture(autouse=True)
def webhook_secret() -> Any:
    os.environ["SK_TEST_SECRET"] = "s3cret"
    yield
    os.environ.pop("SK_TEST_SECRET", None)


@pytest.mark.parametrize("create", [create_inventory_app, create_admin_app])
async def test_the_openapi_document_validates(container: Container, create: Any) -> None:
    validate(create(container).openapi())


@pytest.mark.parametrize("create", [create_inventory_app, create_admin_app])
async def test_every_route_has_its_security_and_problem_responses(
    container: Container, create: Any
) -> None:
    doc = create(container).openapi()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    missing = {}
    for method, path, op in operations(doc):
        route = f"{method} {path}"
        wanted = {"500", "503"}
        if path == WEBHOOK:
            assert op["security"] == [], route
            wanted |= {"401", "404", "413", "422"}
        else:
            assert op.get("security") == [{"bearer": []}], route
            wanted |= {"401", "403"}
        if method == "POST":
            wanted |= {"422"}
        if "{" in path:
            wanted |= {"404", "422"}
        errors = {s: a for s, a in op["responses"].items() if s[0] in "45"}
        if lacking := wanted - set(errors):
            missing[route] = sorted(lacking)
        for status, answer in errors.items():
            assert list(answer["content"]) == ["application/problem+json"], (route, status)
            schema = answer["content"]["application/problem+json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, (route, status)
            assert answer["description"], (route, status)
        assert op["summary"], route
        assert not op["summary"].istitle(), route  # written, not made from the name
    assert missing == {}


@pytest.mark.parametrize("create", [create_inventory_app, create_admin_app])
async def test_idempotency_key_is_documented_on_every_post_that_takes_it(
    container: Container, create: Any
) -> None:
    doc = create(container).openapi()
    for method, path, op in operations(doc):
        headers = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
        wanted = method == "POST" and path in IDEMPOTENT  # GET /admin/wms/sync lists them
        assert ("Idempotency-Key" in headers) == wanted, f"{method} {path}"


async def test_docs_and_redoc_load_their_assets_from_the_package(container: Container) -> None:
    transport = httpx.ASGITransport(app=create_inventory_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        for page in ("/docs", "/redoc"):
            html = (await http.get(page)).text
            assets = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert assets, page
            for url in assets:
                assert url.startswith("/"), (page, url)  # no CDN
                r = await http.get(url)
                assert r.status_code == 200, (page, url)
                assert len(r.content) > 0
