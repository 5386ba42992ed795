"""Repository for Idempotency-Key records and references applied once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An Idempotency-Key row as it is written: whose key, the request's fingerprint and
    the answer given to it."""

    principal: str
    key: str
    method: str
    path: str
    request_hash: str
    status: int
    body: Any

    def params(self) -> tuple[str, str, str, str, str, int, Any]:
        """The row as the bound parameters of ``record_idempotency_key`` (and of the
        key's part of ``insert_events``)."""
        return (
            self.principal,
            self.key,
            self.method,
            self.path,
            self.request_hash,
            self.status,
            self.body,
        )


# ``insert_events`` (and ``place_order``) without a key.
NO_KEY: tuple[None, ...] = (None,) * 7

# The key's primary key: a statement that writes a key without ON CONFLICT (the order's,
# D-366) fails on it when another request holds the key.
KEY_CONSTRAINT = "idempotency_key_pkey"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    request_hash: str
    status_code: int
    body: Any
    method: str = ""
    path: str = ""


@translated
async def claim_key(
    conn: Conn, principal: str, key: str, method: str, path: str, req_hash: str
) -> bool:
    got = await conn.fetchval(q("claim_idempotency_key"), principal, key, method, path, req_hash)
    return got is not None


@translated
async def record_key(conn: Conn, record: KeyRecord) -> bool:
    """Write the key with its answer; False when another request holds the key."""
    got = await conn.fetchval(q("record_idempotency_key"), *record.params())
    return got is not None


@translated
async def get_key(conn: Conn, principal: str, key: str) -> StoredResponse | None:
    r = await conn.fetchrow(q("get_idempotency_key"), principal, key)
    if r is None:
        return None
    return StoredResponse(
        r["request_hash"], r["status_code"], r["response"], r["method"], r["path"]
    )


@translated
async def store_key(conn: Conn, principal: str, key: str, status: int, body: Any) -> None:
    await conn.execute(q("store_idempotent_response"), principal, key, status, body)


@translated
async def claim_reference(conn: Conn, kind: str, reference_id: str, req_hash: str) -> bool:
    got = await conn.fetchval(q("claim_reference"), kind, reference_id, req_hash)
    return got is not None


@translated
async def get_reference(conn: Conn, kind: str, reference_id: str) -> StoredResponse | None:
    r = await conn.fetchrow(q("get_reference"), kind, reference_id)
    return StoredResponse(r["request_hash"], 200, r["response"]) if r else None


@translated
async def store_reference(conn: Conn, kind: str, reference_id: str, body: Any) -> None:
    await conn.execute(q("store_reference_response"), kind, reference_id, body)
