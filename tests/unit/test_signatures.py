"""Webhook signatures: every refusal reason, raw bytes only, the edges of the window."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from stockkeeper.connectors.signatures import (
    GENERIC_SIGNATURE_HEADER,
    GENERIC_TIMESTAMP_HEADER,
    Reason,
    SignatureError,
    check_shopify_triggered_at,
    generic_headers,
    sign_generic,
    sign_shopify,
    verify_generic,
    verify_shopify,
)

SECRET = b"whsec-0123456789"
BODY = b'{"event_id":"e-1","sku":"SKU-1","quantity":3}'
SENT = 1_900_000_000
TOLERANCE = 300.0


def generic(
    body: bytes = BODY,
    signature: str | None = None,
    timestamp: str | None = str(SENT),
    *,
    now: float = SENT,
    tolerance_s: float = TOLERANCE,
    secret: bytes = SECRET,
) -> None:
    if signature is None:
        signature = sign_generic(SECRET, BODY, SENT)
    verify_generic(secret, body, signature, timestamp, now=now, tolerance_s=tolerance_s)


def reason_of(call: Callable[..., object], *args: object, **kwargs: object) -> Reason:
    with pytest.raises(SignatureError) as info:
        call(*args, **kwargs)
    return info.value.reason


# -- generic preset ----------------------------------------------------------------------


def test_generic_signature_is_hex_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, f"{SENT}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_generic(SECRET, BODY, SENT) == expected
    assert generic_headers(SECRET, BODY, SENT) == {
        GENERIC_SIGNATURE_HEADER: expected,
        GENERIC_TIMESTAMP_HEADER: str(SENT),
    }
    generic()  # accepted


def test_uppercase_hex_is_the_same_digest() -> None:
    generic(signature=sign_generic(SECRET, BODY, SENT).upper())


@pytest.mark.parametrize(
    ("signature", "timestamp"),
    [(None, str(SENT)), ("", str(SENT)), ("sig", None), ("sig", ""), (None, None)],
)
def test_missing_signature_or_timestamp(signature: str | None, timestamp: str | None) -> None:
    with pytest.raises(SignatureError) as info:
        verify_generic(SECRET, BODY, signature, timestamp, now=SENT, tolerance_s=TOLERANCE)
    assert info.value.reason is Reason.MISSING
    assert info.value.reason == "missing"


@pytest.mark.parametrize(
    "signature",
    [
        "zz" * 32,  # not hex
        "ab" * 31,  # too short
        "ab" * 33,  # too long
        "ab " * 31 + "abab",  # bytes.fromhex would skip the spaces
        "sha256=" + "ab" * 32,  # a prefix this preset does not use
        "é" * 64,
    ],
)
def test_malformed_signature(signature: str) -> None:
    assert reason_of(generic, signature=signature) is Reason.MALFORMED


@pytest.mark.parametrize(
    "timestamp",
    ["abc", "1.9e9", "1900000000.5", "-1900000000", "+1900000000", " 1900000000", "1_900",
     "١٩٠٠", "9" * 400],
)  # fmt: skip
def test_malformed_timestamp(timestamp: str) -> None:
    assert reason_of(generic, timestamp=timestamp) is Reason.MALFORMED


def test_a_one_byte_change_in_the_body_is_a_mismatch() -> None:
    changed = BODY.replace(b'"quantity":3', b'"quantity":4')
    assert len(changed) == len(BODY)
    assert sum(a != b for a, b in zip(changed, BODY, strict=True)) == 1
    assert reason_of(generic, changed) is Reason.MISMATCH


def test_reformatted_json_with_the_same_meaning_is_a_mismatch() -> None:
    pretty = json.dumps(json.loads(BODY), indent=2).encode()
    assert json.loads(pretty) == json.loads(BODY)
    assert reason_of(generic, pretty) is Reason.MISMATCH
    assert reason_of(generic, BODY + b"\n") is Reason.MISMATCH


def test_another_secret_or_a_swapped_timestamp_is_a_mismatch() -> None:
    assert reason_of(generic, secret=b"another-secret") is Reason.MISMATCH
    # A replayer cannot refresh the timestamp: it is signed with the body.
    fresh = SENT + 3600
    assert reason_of(generic, timestamp=str(fresh), now=fresh) is Reason.MISMATCH
    # Nor write the same number differently.
    assert reason_of(generic, timestamp=f"0{SENT}") is Reason.MISMATCH


@pytest.mark.parametrize("offset", [-TOLERANCE, -0.5, 0.0, 0.5, TOLERANCE])
def test_inside_the_window_both_edges_included(offset: float) -> None:
    generic(now=SENT + offset)


@pytest.mark.parametrize("offset", [-TOLERANCE - 0.001, TOLERANCE + 0.001, 86_400.0])
def test_outside_the_window_is_stale(offset: float) -> None:
    assert reason_of(generic, now=SENT + offset) is Reason.STALE


def test_a_forgery_is_a_mismatch_even_when_also_stale() -> None:
    assert reason_of(generic, b"forged", now=SENT + 86_400) is Reason.MISMATCH


def test_zero_tolerance_accepts_only_the_same_second() -> None:
    generic(now=SENT, tolerance_s=0)
    assert reason_of(generic, now=SENT + 1, tolerance_s=0) is Reason.STALE


def test_an_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        sign_generic(b"", BODY, SENT)
    with pytest.raises(ValueError, match="empty"):
        generic(secret=b"")


# -- Shopify preset ----------------------------------------------------------------------


def test_shopify_signature_is_base64_hmac_of_the_raw_body() -> None:
    digest = hmac.new(SECRET, BODY, hashlib.sha256).digest()
    assert sign_shopify(SECRET, BODY) == base64.b64encode(digest).decode()
    verify_shopify(SECRET, BODY, sign_shopify(SECRET, BODY))


@pytest.mark.parametrize("signature", [None, ""])
def test_shopify_missing(signature: str | None) -> None:
    assert reason_of(verify_shopify, SECRET, BODY, signature) is Reason.MISSING


@pytest.mark.parametrize(
    "signature",
    [
        "not base64!",
        "YWJj",  # base64, but of three bytes, not a digest
        base64.b64encode(b"x" * 32).decode().rstrip("="),  # padding missing
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # the URL-safe alphabet
        "ü" * 44,
        hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(),  # hex where base64 belongs
    ],
)
def test_shopify_malformed(signature: str) -> None:
    assert reason_of(verify_shopify, SECRET, BODY, signature) is Reason.MALFORMED


def test_shopify_mismatch_on_one_byte_reformatting_or_secret() -> None:
    signature = sign_shopify(SECRET, BODY)
    changed = BODY[:-2] + b"4}"
    assert reason_of(verify_shopify, SECRET, changed, signature) is Reason.MISMATCH
    pretty = json.dumps(json.loads(BODY), indent=2).encode()
    assert reason_of(verify_shopify, SECRET, pretty, signature) is Reason.MISMATCH
    assert reason_of(verify_shopify, b"other", BODY, signature) is Reason.MISMATCH


def test_the_presets_do_not_accept_each_other() -> None:
    # The generic digest (hex) is malformed for Shopify; Shopify's (base64) for generic.
    generic_sig = sign_generic(SECRET, BODY, SENT)
    shopify_sig = sign_shopify(SECRET, BODY)
    assert reason_of(verify_shopify, SECRET, BODY, generic_sig) is Reason.MALFORMED
    assert reason_of(generic, signature=shopify_sig) is Reason.MALFORMED


def test_the_error_names_its_reason() -> None:
    error = SignatureError(Reason.STALE, "too old")
    assert str(error) == "stale: too old"
    assert str(SignatureError(Reason.MISSING)) == "missing"
    assert [r.value for r in Reason] == ["missing", "malformed", "mismatch", "stale"]


# -- Shopify's trigger time (the replay window) ---------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["2026-04-01T10:00:00.123456789Z", "2026-04-01T10:00:00Z", "2026-04-01T12:00:00+02:00"],
)
def test_shopify_trigger_time_inside_the_window(value: str) -> None:
    at = datetime(2026, 4, 1, 10, 0, tzinfo=UTC).timestamp()
    check_shopify_triggered_at(value, now=at + 299, tolerance_s=300)
    check_shopify_triggered_at(value, now=at - 299, tolerance_s=300)


def test_shopify_trigger_time_outside_the_window_is_stale() -> None:
    at = datetime(2026, 4, 1, 10, 0, tzinfo=UTC).timestamp()
    value = "2026-04-01T10:00:00.000000001Z"
    for now in (at + 301, at - 301):
        with pytest.raises(SignatureError) as caught:
            check_shopify_triggered_at(value, now=now, tolerance_s=300)
        assert caught.value.reason is Reason.STALE


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.MISSING),
        ("", Reason.MISSING),
        ("yesterday", Reason.MALFORMED),
        ("2026-04-01T10:00:00", Reason.MALFORMED),  # no offset: which clock?
        ("1775037600", Reason.MALFORMED),
    ],
)
def test_shopify_trigger_time_missing_or_malformed(value: str | None, reason: Reason) -> None:
    with pytest.raises(SignatureError) as caught:
        check_shopify_triggered_at(value, now=0, tolerance_s=300)
    assert caught.value.reason is reason
