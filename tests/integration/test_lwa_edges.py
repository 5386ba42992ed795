"""Login with Amazon answering what the sandbox does not: throttled or down with a
``Retry-After``, or a 200 that is no token. The token endpoint is an httpx transport
answering as LWA could (no network)."""

from __future__ import annotations

import httpx
import pytest

from stockkeeper.connectors.http import ConnectorUnavailable
from stockkeeper.connectors.lwa import LwaCredentials, LwaTokens

CREDENTIALS = LwaCredentials("amzn1.app", "secret", "Atzr|refresh", "http://lwa.test/auth/o2/token")


def tokens(answer: httpx.Response) -> LwaTokens:
    return LwaTokens("amazon-eu", CREDENTIALS, transport=httpx.MockTransport(lambda _: answer))


@pytest.mark.parametrize(
    ("status", "reason"), [(429, "rate_limited"), (503, "server_error"), (500, "server_error")]
)
async def test_a_throttled_or_failing_token_endpoint_carries_its_retry_after(
    status: int, reason: str
) -> None:
    lwa = tokens(httpx.Response(status, headers={"Retry-After": "7"}, json={"error": "x"}))
    try:
        with pytest.raises(ConnectorUnavailable) as caught:
            await lwa.token()
    finally:
        await lwa.aclose()
    assert (caught.value.reason, caught.value.status, caught.value.retry_after) == (
        reason,
        status,
        7.0,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"access_token": "", "expires_in": 3600}',
        b'{"access_token": "Atza|t", "expires_in": "3600"}',
        b'{"access_token": "Atza|t", "expires_in": true}',
        b'{"access_token": "Atza|t", "expires_in": 0}',
    ],
)
async def test_a_200_that_is_no_token_is_unavailable(body: bytes) -> None:
    lwa = tokens(httpx.Response(200, content=body))
    try:
        with pytest.raises(ConnectorUnavailable) as caught:
            await lwa.token()
    finally:
        await lwa.aclose()
    assert caught.value.reason == "invalid_response"
