"""The sandbox Shopify's GraphQL endpoint: what a request asks for, and the answer.

The GraphQL is not parsed. The operation is recognised by its root field
(``inventoryItems``, ``nodes``, ``inventorySetQuantities``), its arguments come from the
variables (validated by the models here: a bad one is an ``INVALID_VARIABLE`` error), and
the answer has a fixed selection in Shopify's shape. Every answer carries
``extensions.cost``: the requested cost (Shopify's rules, simplified), the actual cost,
and the bucket's ``throttleStatus``.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Header, HTTPException, params
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

if TYPE_CHECKING:
    from stockkeeper_sandbox.shopify import ShopifyState

MAX_QUERY_COST = 1000.0
Int = Annotated[int, Strict()]

ROOT_FIELDS = ("inventorySetQuantities", "inventoryItems", "nodes")
_ROOT = re.compile(r"\b(" + "|".join(ROOT_FIELDS) + r")\s*\(")
# One aliased level per location: ``at0: inventoryLevel(locationId: $at0)``.
_ALIASED_LEVEL = re.compile(r"\b(\w+)\s*:\s*inventoryLevel\s*\(\s*locationId\s*:\s*\$(\w+)\s*\)")
_IDEMPOTENT = re.compile(r'@idempotent\s*\(\s*key\s*:\s*(?:\$(\w+)|"([^"]*)")\s*\)')
_SKU_TERM = re.compile(r'sku:(?:"((?:[^"\\]|\\.)*)"|([^\s()"]+))')
_UNESCAPE = re.compile(r"\\(.)")


class _Vars(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ItemsVars(_Vars):
    first: Int = Field(ge=1, le=250)
    after: str | None = None
    query: str = ""


class NodesVars(_Vars):
    ids: list[str] = Field(max_length=250)
    locationId: str


class IdsVars(_Vars):
    ids: list[str] = Field(max_length=250)


class QuantityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inventoryItemId: str
    locationId: str
    quantity: Int
    # Required, though null is allowed (it opts out of the check): API 2026-04.
    changeFromQuantity: Int | None


class SetInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    reason: str
    referenceDocumentUri: str | None = None
    quantities: list[QuantityIn] = Field(min_length=1, max_length=250)


class SetVars(_Vars):
    input: SetInput
    idempotencyKey: str | None = None


class GraphQLRequest(BaseModel):
    query: str = Field(min_length=1, max_length=100_000)
    variables: dict[str, Any] | None = None
    operationName: str | None = None


class GraphQLError(Exception):
    """A top-level GraphQL error (HTTP 200, ``errors`` and no ``data``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _skus_of(search: str) -> list[str]:
    """The SKUs of a search like ``sku:"A" OR sku:B`` (other terms are ignored)."""
    return [
        _UNESCAPE.sub(r"\1", quoted) if quoted else bare
        for quoted, bare in _SKU_TERM.findall(search)
    ]


def _operation(query: str) -> str:
    without_comments = re.sub(r"#[^\n]*", "", query)
    found = _ROOT.search(without_comments)
    if found is None:
        raise GraphQLError(
            "The sandbox knows inventoryItems, nodes and inventorySetQuantities.", "undefinedField"
        )
    return found.group(1)


def _vars(model: type[_Vars], variables: dict[str, Any]) -> Any:
    try:
        return model.model_validate(variables)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GraphQLError(
            f"Variable ${where} was provided invalid value: {first['msg']}", "INVALID_VARIABLE"
        ) from None


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        kind, _, offset = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind == "offset" and offset.isdigit():
            return int(offset)
    except (ValueError, UnicodeError):
        pass
    raise GraphQLError(f"Invalid cursor for current pagination: {cursor!r}", "INVALID_VARIABLE")


def _requested_cost(operation: str, query: str, variables: dict[str, Any]) -> float:
    """Shopify's rules, simplified: a mutation is 10; a connection 2 plus one per item
    asked for; nodes() one plus two per id (the item and its level)."""
    if operation == "inventorySetQuantities":
        return 10.0
    if operation == "inventoryItems":
        first = variables.get("first")
        return 2.0 + (first if isinstance(first, int) else 0)
    ids = variables.get("ids")
    # One level per location asked for (aliased levels: one per alias).
    per_id = 1.0 + max(1, len(_ALIASED_LEVEL.findall(query)))
    return 1.0 + per_id * (len(ids) if isinstance(ids, list) else 0)


def _run(
    state: ShopifyState, operation: str, query: str, variables: dict[str, Any]
) -> tuple[Any, float]:
    """The ``data`` of one operation and its actual cost."""
    if operation == "inventoryItems":
        items = _vars(ItemsVars, variables)
        start = _offset(items.after)
        matches = state.items_by_sku(_skus_of(items.query))
        nodes = matches[start : start + items.first]
        end = start + len(nodes)
        page = {"hasNextPage": end < len(matches), "endCursor": _cursor(end) if nodes else None}
        return {"inventoryItems": {"nodes": nodes, "pageInfo": page}}, 2.0 + len(nodes)
    aliased = dict(_ALIASED_LEVEL.findall(query)) if operation == "nodes" else {}
    if aliased:
        ids = _vars(IdsVars, variables).ids
        locations: dict[str, str] = {}
        for alias, name in aliased.items():
            value = variables.get(name)
            if not isinstance(value, str):
                message = f"Variable ${name} of type ID! was not provided."
                raise GraphQLError(message, "INVALID_VARIABLE")
            locations[alias] = value
        found = state.levels_at(ids, locations)
        levels = sum(1 for n in found if n is not None for a in locations if n[a] is not None)
        return {"nodes": found}, 1.0 + len(ids) + levels
    if operation == "nodes":
        args = _vars(NodesVars, variables)
        found = state.available(args.ids, args.locationId)
        levels = sum(1 for n in found if n is not None and n["inventoryLevel"] is not None)
        return {"nodes": found}, 1.0 + len(args.ids) + levels
    if not re.search(r"^\s*mutation\b", query):
        raise GraphQLError("inventorySetQuantities is a mutation.", "BAD_REQUEST")
    directive = _IDEMPOTENT.search(query)
    if directive is None:
        raise GraphQLError(
            "The @idempotent directive is required for this mutation.", "BAD_REQUEST"
        )
    args = _vars(SetVars, variables)
    key = directive.group(2) if directive.group(1) is None else variables.get(directive.group(1))
    if not isinstance(key, str) or not key:
        raise GraphQLError("The @idempotent key must be a non-empty string.", "BAD_REQUEST")
    return {"inventorySetQuantities": state.set_quantities(args.input, key)}, 10.0


def answer(state: ShopifyState, body: GraphQLRequest) -> dict[str, Any]:
    variables = body.variables or {}
    operation = _operation(body.query)
    requested = _requested_cost(operation, body.query, variables)
    cost: dict[str, Any] = {"requestedQueryCost": requested, "actualQueryCost": None}
    if requested > MAX_QUERY_COST:
        message = (
            f"Query cost is {requested:.0f}, which exceeds the single query max cost limit (1000)."
        )
        error = {"message": message, "extensions": {"code": "MAX_COST_EXCEEDED"}}
        return {"errors": [error], "extensions": {"cost": cost}}
    if not state.charge(requested):
        cost["throttleStatus"] = state.throttle_status()
        error = {"message": "Throttled", "extensions": {"code": "THROTTLED"}}
        return {"errors": [error], "extensions": {"cost": cost}}
    try:
        data, actual = _run(state, operation, body.query, variables)
    except GraphQLError as exc:
        state.refund(requested)
        cost["throttleStatus"] = state.throttle_status()
        error = {"message": str(exc), "extensions": {"code": exc.code}}
        return {"errors": [error], "extensions": {"cost": cost}}
    state.refund(requested - actual)
    cost["actualQueryCost"] = actual
    cost["throttleStatus"] = state.throttle_status()
    return {"data": data, "extensions": {"cost": cost}}


def access_token_required(token: str | None) -> params.Depends:
    """With a token set, ``X-Shopify-Access-Token: <token>`` or 401 as Shopify says it."""

    async def authorized(
        x_shopify_access_token: Annotated[str | None, Header()] = None,
    ) -> None:
        if token is None:
            return
        given = (x_shopify_access_token or "").encode()
        if not secrets.compare_digest(given, token.encode()):
            message = "[API] Invalid API key or access token (unrecognized login or wrong password)"
            raise HTTPException(401, message)

    guard: params.Depends = Depends(authorized)
    return guard
