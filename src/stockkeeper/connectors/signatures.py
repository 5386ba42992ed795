"""Webhook signatures: HMAC-SHA256 over the raw body bytes, compared in constant time.

Two presets:

- generic: ``X-Signature`` is the lowercase hex HMAC-SHA256 of ``f"{timestamp}.".encode()
  + body`` and ``X-Timestamp`` the sender's clock in unix seconds. The timestamp is signed
  together with the body, so it cannot be swapped for a fresh one: a captured delivery
  replays only inside the tolerance window, and within it duplicate deliveries are caught
  by their event id. An unsigned timestamp would make the window no defence at all.
- Shopify: ``X-Shopify-Hmac-Sha256`` is the base64 HMAC-SHA256 of the raw body with the
  app's secret. ``X-Shopify-Triggered-At`` (ISO 8601, UTC) says when Shopify fired the
  delivery; it is not covered by the signature, but Shopify always sends it, so a
  delivery older than the tolerance is refused as stale, and within the window duplicate
  deliveries are caught by their ``X-Shopify-Webhook-Id``.

Always verify the bytes as they arrived: parsing and re-serialising JSON changes
whitespace and key order, and with them the digest. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import string
from datetime import datetime
from enum import StrEnum

GENERIC_SIGNATURE_HEADER = "X-Signature"
GENERIC_TIMESTAMP_HEADER = "X-Timestamp"
SHOPIFY_SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
SHOPIFY_TRIGGERED_AT_HEADER = "X-Shopify-Triggered-At"

_DIGEST_SIZE = hashlib.sha256().digest_size
_HEX = frozenset(string.hexdigits)
# Unix seconds have 10 digits until the year 2286; a longer "timestamp" is not one (and
# a huge integer would overflow when compared with a float clock).
_MAX_TIMESTAMP_DIGITS = 12


class Reason(StrEnum):
    """Why a signature was refused; the values are fit for logs and metric labels."""

    MISSING = "missing"  # no signature or timestamp header, or an empty one
    MALFORMED = "malformed"  # not hex / base64 of a SHA-256 digest, or not unix seconds
    MISMATCH = "mismatch"  # well-formed, but not made with our secret over these bytes
    STALE = "stale"  # correctly signed, but the timestamp is outside the tolerance window


class SignatureError(Exception):
    """A webhook delivery whose signature does not hold; ``reason`` says why."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


def _mac(secret: bytes, message: bytes) -> bytes:
    if not secret:
        # An empty key signs nothing anyone could not sign too: a configuration error.
        raise ValueError("a webhook secret must not be empty")
    return hmac.new(secret, message, hashlib.sha256).digest()


def _generic_message(body: bytes, timestamp: str) -> bytes:
    # The header's text as sent, not a re-rendering of the number it parses to.
    return f"{timestamp}.".encode() + body


def sign_generic(secret: bytes, body: bytes, timestamp: int) -> str:
    """The generic preset's ``X-Signature`` for ``body`` sent at ``timestamp`` (unix s)."""
    return _mac(secret, _generic_message(body, str(timestamp))).hex()


def sign_shopify(secret: bytes, body: bytes) -> str:
    """Shopify's ``X-Shopify-Hmac-Sha256`` for ``body``."""
    return base64.b64encode(_mac(secret, body)).decode("ascii")


def generic_headers(secret: bytes, body: bytes, timestamp: int) -> dict[str, str]:
    """Both headers of the generic preset, for senders (sandboxes, tests)."""
    return {
        GENERIC_SIGNATURE_HEADER: sign_generic(secret, body, timestamp),
        GENERIC_TIMESTAMP_HEADER: str(timestamp),
    }


def _parse_timestamp(timestamp: str) -> int:
    # Strictly ASCII digits: int() would also take " 12", "+12", "1_2" and other scripts'
    # digits, none of which a sender that follows the format produces.
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise SignatureError(Reason.MALFORMED, "the timestamp is not unix seconds")
    if len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        raise SignatureError(Reason.MALFORMED, "the timestamp is too long")
    return int(timestamp)


def _parse_hex_digest(signature: str) -> bytes:
    # Hex is case-insensitive; senders should write lowercase, but either decodes to the
    # same digest. bytes.fromhex alone would also accept spaces, hence the check.
    if len(signature) != 2 * _DIGEST_SIZE or not _HEX.issuperset(signature):
        raise SignatureError(Reason.MALFORMED, "the signature is not a hex SHA-256 digest")
    return bytes.fromhex(signature)


def _parse_base64_digest(signature: str) -> bytes:
    try:
        digest = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise SignatureError(Reason.MALFORMED, "the signature is not base64") from None
    if len(digest) != _DIGEST_SIZE:
        raise SignatureError(Reason.MALFORMED, "the signature is not a SHA-256 digest")
    return digest


def verify_generic(
    secret: bytes,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float,
    tolerance_s: float,
) -> None:
    """Accept a generic-preset delivery or raise :class:`SignatureError`.

    ``signature`` and ``timestamp`` are the raw header values (None when absent), ``body``
    the raw request body, ``now`` the receiver's clock in unix seconds. The delivery is
    fresh while ``abs(now - timestamp) <= tolerance_s`` (both edges included); the window
    works both ways, so a sender whose clock runs a little fast is not refused.

    The digest is checked before the window, so ``stale`` always means a genuinely signed
    delivery (a replay, or clock skew) and never a forgery that also happens to be old.
    """
    if not signature or not timestamp:
        raise SignatureError(Reason.MISSING, "the signature or the timestamp is absent")
    sent_at = _parse_timestamp(timestamp)
    given = _parse_hex_digest(signature)
    expected = _mac(secret, _generic_message(body, timestamp))
    if not hmac.compare_digest(given, expected):
        raise SignatureError(Reason.MISMATCH, "the signature does not match the body")
    if abs(now - sent_at) > tolerance_s:
        raise SignatureError(
            Reason.STALE, f"sent at {sent_at}, {now - sent_at:.0f}s from now, past the window"
        )


def verify_shopify(secret: bytes, body: bytes, signature: str | None) -> None:
    """Accept a Shopify delivery (``X-Shopify-Hmac-Sha256``) or raise
    :class:`SignatureError`; ``body`` is the raw request body."""
    if not signature:
        raise SignatureError(Reason.MISSING, "the signature is absent")
    given = _parse_base64_digest(signature)
    if not hmac.compare_digest(given, _mac(secret, body)):
        raise SignatureError(Reason.MISMATCH, "the signature does not match the body")


def _parse_triggered_at(value: str) -> float:
    # Shopify writes nanoseconds ("2026-04-01T10:00:00.123456789Z"); Python's parser takes
    # at most microseconds, so the fraction is cut to six digits first.
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}" if digits else head + rest
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SignatureError(Reason.MALFORMED, "the trigger time is not ISO 8601") from None
    if moment.tzinfo is None:
        raise SignatureError(Reason.MALFORMED, "the trigger time has no UTC offset")
    return moment.timestamp()


def check_shopify_triggered_at(triggered_at: str | None, *, now: float, tolerance_s: float) -> None:
    """Refuse a Shopify delivery fired outside the tolerance window, both ways (raises
    :class:`SignatureError`); ``triggered_at`` is ``X-Shopify-Triggered-At`` as sent.

    Check it after :func:`verify_shopify`, so ``stale`` means a genuine delivery."""
    if not triggered_at:
        raise SignatureError(Reason.MISSING, "X-Shopify-Triggered-At is absent")
    fired = _parse_triggered_at(triggered_at)
    if abs(now - fired) > tolerance_s:
        raise SignatureError(
            Reason.STALE, f"triggered {now - fired:.0f}s from now, past the window"
        )
