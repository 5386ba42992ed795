"""``request_path``: what ``request.url.path`` gives, for any path (D-403)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from stockkeeper.api.problems import request_path


@pytest.mark.parametrize(
    "path",
    [
        "/inventory/reserve",
        "/inventory/SKU 1/ledger",
        "/inventory/a?b#c",
        "/inventory/back\\slash",
        "/inventory/%3F-already",
        "/inventory/ünïcode/€",
        "/",
    ],
)
@pytest.mark.parametrize("host", [b"127.0.0.1:8080", b"shop.example", None])
def test_request_path_is_the_urls_path(path: str, host: bytes | None) -> None:
    headers = [(b"host", host)] if host is not None else []
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "query_string": b"x=1",
        "headers": headers,
        "server": ("127.0.0.1", 8080),
        "scheme": "http",
    }
    request = Request(scope)
    assert request_path(request) == request.url.path
