"""The HTTP edge seen from outside, through a real server process (issue 13, points 8
and 12): an order id in any script is answered 202 with a percent-encoded Location (not
a bare 500 or a dropped connection, on every retry); a control character in an id is
422; an anonymous request is 401 before its body is parsed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.helpers import assert_problem, client
from tests.integration.orders_helpers import CARRIERS, SHIP_TO
from tests.support import (
    ADMIN_TOKEN,
    WRITER_TOKEN,
    ServerProcess,
    auth,
    base_config,
    running_server,
)

pytestmark = pytest.mark.slow

SKU = "EDGE-1"


@pytest.fixture(scope="module")
def server(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cfg = base_config(module_db_url, orders={"carriers": CARRIERS})
    with running_server(cfg, tmp_path_factory.mktemp("edge")) as s:
        resp = httpx.post(
            s.url + "/inventory/receipts",
            json={"sku": SKU, "quantity": 100, "reference_id": "seed"},
            headers=auth(ADMIN_TOKEN),
        )
        assert resp.status_code == 201, resp.text
        yield s


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with client(server) as c:
        yield c


def order(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "lines": [{"sku": SKU, "quantity": 1}], "ship_to": SHIP_TO}


@pytest.mark.parametrize(
    "order_id", [pytest.param("заказ-1", id="cyrillic"), pytest.param("🛒-2", id="emoji")]
)
async def test_an_order_id_in_any_script_gets_202_and_a_location_that_reads_back(
    http: httpx.AsyncClient, order_id: str
) -> None:
    placed = await http.post("/orders", json=order(order_id), headers=auth(WRITER_TOKEN))
    assert placed.status_code == 202, placed.text
    assert placed.headers["location"] == "/orders/" + quote(order_id, safe="")
    retried = await http.post("/orders", json=order(order_id), headers=auth(WRITER_TOKEN))
    assert retried.status_code == 200, retried.text
    polled = await http.get(placed.headers["location"], headers=auth(WRITER_TOKEN))
    assert polled.status_code == 200, polled.text
    assert polled.json()["order_id"] == order_id


async def test_an_order_id_with_u007f_is_422(http: httpx.AsyncClient) -> None:
    resp = await http.post("/orders", json=order("заказ\x7f"), headers=auth(WRITER_TOKEN))
    doc = assert_problem(resp, 422, "validation")
    assert doc["errors"][0]["field"] == "body.order_id", doc


async def test_an_anonymous_reserve_is_401_before_its_body_is_read(
    http: httpx.AsyncClient,
) -> None:
    assert_problem(await http.post("/inventory/reserve", json={}), 401, "unauthorized")
    malformed = await http.post(
        "/inventory/reserve", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_problem(malformed, 401, "unauthorized")
