"""Contract: every call of the feed flow goes to an operation of Amazon's own Feeds API
model (``tests/specs/amazon/feeds_2021-06-30.json``) with only the parameters it
declares, and every SP-API answer the adapter reads fits that operation's response (the
bodies themselves are checked in ``test_amazon_feeds.py``). The presigned upload and
download URLs are outside the model (S3) and are left out."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from jsonschema import Draft4Validator

from stockkeeper.connectors.amazon import AmazonChannel
from stockkeeper.connectors.channels import Push
from tests.integration.test_amazon import (
    SPECS,
    Amazon,
    amazon_cfg,
    credentials,
    feeds_sandbox,
)

SPEC = json.loads((SPECS / "feeds_2021-06-30.json").read_text())


def operation(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """The model's operation for ``method path`` (its template and definition)."""
    for template, ops in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            return template, ops[method.lower()]
    return None


def response_validator(op: dict[str, Any], status: str) -> Draft4Validator:
    schema = op["responses"][status]["schema"]
    return Draft4Validator({**schema, "definitions": SPEC["definitions"]})


@pytest.fixture
def amazon() -> Iterator[Amazon]:
    with feeds_sandbox() as sandbox:
        yield sandbox


@pytest.fixture
async def adapter(amazon: Amazon) -> AsyncIterator[AmazonChannel]:
    _, server, _ = amazon
    a = AmazonChannel(
        amazon_cfg(server, feed_threshold=2, feed_poll_s=0.01, feed_timeout_s=30),
        lwa=credentials(server),
    )
    yield a
    await a.aclose()


async def test_every_feed_call_is_an_operation_of_the_model_with_its_parameters(
    adapter: AmazonChannel, amazon: Amazon
) -> None:
    state, _, recorder = amazon
    state.gzip_reports = True
    outcomes = await adapter.push([Push("A", 1, 1), Push("B", 2, 1), Push("C", 3, 1)])
    assert [o.status for o in outcomes] == ["ok", "ok", "ok"]
    seen: list[str] = []
    for method, path, query, _body in recorder.requests:
        if path == "/auth/o2/token" or path.startswith("/listings/"):
            continue
        if path.startswith(("/_sandbox/uploads/", "/_sandbox/downloads/")):
            continue  # the presigned S3 URLs: no SP-API operation
        found = operation(method, path)
        assert found is not None, f"{method} {path} is no operation of the Feeds model"
        template, op = found
        declared = {p["name"]: p for p in op.get("parameters", [])}
        given = dict(parse_qsl(query))
        assert set(given) <= {n for n, p in declared.items() if p["in"] == "query"}, given
        required = {n for n, p in declared.items() if p["in"] == "query" and p.get("required")}
        assert required <= set(given)
        seen.append(f"{method} {template}")
    assert seen[:2] == ["POST /feeds/2021-06-30/documents", "POST /feeds/2021-06-30/feeds"]
    assert "GET /feeds/2021-06-30/feeds/{feedId}" in seen
    assert seen[-1] == "GET /feeds/2021-06-30/documents/{feedDocumentId}"


async def test_the_sandbox_answers_fit_each_operations_documented_response(
    adapter: AmazonChannel, amazon: Amazon
) -> None:
    _, server, _ = amazon
    assert adapter.tokens is not None
    token = await adapter.tokens.token()
    async with httpx.AsyncClient(
        base_url=server.url, headers={"x-amz-access-token": token}
    ) as client:
        made = await client.post(
            "/feeds/2021-06-30/documents", json={"contentType": "application/json; charset=UTF-8"}
        )
        _, op = operation("POST", "/feeds/2021-06-30/documents") or ("", {})
        assert str(made.status_code) in op["responses"]
        assert not list(response_validator(op, str(made.status_code)).iter_errors(made.json()))
        upload = await client.put(made.json()["url"], json=adapter.feed_document([Push("A", 1, 1)]))
        assert upload.status_code == 200
        created = await client.post(
            "/feeds/2021-06-30/feeds",
            json={
                "feedType": "JSON_LISTINGS_FEED",
                "marketplaceIds": ["A1PA6795UKMFR9"],
                "inputFeedDocumentId": made.json()["feedDocumentId"],
            },
        )
        _, op = operation("POST", "/feeds/2021-06-30/feeds") or ("", {})
        assert created.status_code == 202
        assert not list(response_validator(op, "202").iter_errors(created.json()))
        feed = await client.get(f"/feeds/2021-06-30/feeds/{created.json()['feedId']}")
        _, op = operation("GET", "/feeds/2021-06-30/feeds/x") or ("", {})
        assert not list(response_validator(op, "200").iter_errors(feed.json()))
        gone = await client.get("/feeds/2021-06-30/feeds/no-such-feed")
        assert str(gone.status_code) in op["responses"]
        if gone.status_code >= 400:
            errors = response_validator(op, str(gone.status_code)).iter_errors(gone.json())
            assert not list(errors), gone.json()
