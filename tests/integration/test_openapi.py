"""Both apps' OpenAPI documents show every 2xx answer's real schema, from its model."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

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


async def test_the_schemas_name_their_models(container: Container) -> None:
    schemas = success_schemas(create_inventory_app(container))
    ref = "#/components/schemas/"
    assert schemas["POST /inventory/reserve 201"] == {"$ref": f"{ref}ReservationOut"}
    assert schemas["POST /inventory/receipts 201"] == {"$ref": f"{ref}ReceiptOut"}
    assert schemas["GET /orders/{order_id} 200"] == {"$ref": f"{ref}OrderOut"}
