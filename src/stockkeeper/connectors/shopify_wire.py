"""The Shopify channel's wire format: the GraphQL documents it sends and the models its
answers are validated with.

Answers come as ``{"data", "errors", "extensions": {"cost"}}``; :func:`parser` turns one
into an :class:`Answer` for :class:`~stockkeeper.connectors.http.HttpCaller`, raising
:class:`~stockkeeper.connectors.http.InvalidResponse` (a retried try) when it breaks the
contract. Errors in ``errors`` are not exceptions here: the adapter decides what a
``THROTTLED`` or any other error means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Strict, ValidationError

from stockkeeper.connectors.http import InvalidResponse

# Shopify takes at most 250 ids per nodes() call and 250 items per connection page.
MAX_PAGE = 250
THROTTLED = "THROTTLED"
D = TypeVar("D", bound=BaseModel)
Int = Annotated[int, Strict()]

ITEMS_BY_SKU = """
query StockkeeperItemsBySku($first: Int!, $after: String, $query: String!) {
  inventoryItems(first: $first, after: $after, query: $query) {
    nodes { id sku }
    pageInfo { hasNextPage endCursor }
  }
}
"""
AVAILABLE = """
query StockkeeperAvailable($ids: [ID!]!, $locationId: ID!) {
  nodes(ids: $ids) {
    ... on InventoryItem {
      id
      sku
      inventoryLevel(locationId: $locationId) {
        quantities(names: ["available"]) { name quantity }
      }
    }
  }
}
"""
LEVEL_ALIAS = "at"  # at0, at1, ...: one inventoryLevel per mapped location


def available_at(locations: int) -> str:
    """The read of a shop with several locations: per inventory item, one aliased
    ``inventoryLevel(locationId:)`` per mapped location (``$at0``, ``$at1``, ...). Only
    aliases and variable names are generated; every value is a variable."""
    names = [f"{LEVEL_ALIAS}{i}" for i in range(locations)]
    params = "".join(f", ${n}: ID!" for n in names)
    levels = "".join(
        f"""
      {n}: inventoryLevel(locationId: ${n}) {{
        quantities(names: ["available"]) {{ name quantity }}
      }}"""
        for n in names
    )
    return f"""
query StockkeeperAvailableAt($ids: [ID!]!{params}) {{
  nodes(ids: $ids) {{
    ... on InventoryItem {{
      id
      sku{levels}
    }}
  }}
}}
"""


SET_AVAILABLE = """
mutation StockkeeperSetAvailable(
  $input: InventorySetQuantitiesInput!, $idempotencyKey: String!
) {
  inventorySetQuantities(input: $input) @idempotent(key: $idempotencyKey) {
    inventoryAdjustmentGroup { id }
    userErrors { code field message }
  }
}
"""


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Throttle(Wire):
    maximumAvailable: float
    currentlyAvailable: float
    restoreRate: float


class Cost(Wire):
    requestedQueryCost: float | None = None
    actualQueryCost: float | None = None
    throttleStatus: Throttle | None = None


class Extensions(Wire):
    cost: Cost | None = None


class GraphQLError(Wire):
    message: str
    extensions: dict[str, Any] | None = None

    @property
    def code(self) -> str | None:
        code = (self.extensions or {}).get("code")
        return code if isinstance(code, str) else None


class Envelope(Wire):
    data: dict[str, Any] | None = None
    errors: list[GraphQLError] | None = None
    extensions: Extensions | None = None


class ItemNode(Wire):
    id: str
    sku: str | None = None


class PageInfo(Wire):
    hasNextPage: bool
    endCursor: str | None = None


class ItemConnection(Wire):
    nodes: list[ItemNode]
    pageInfo: PageInfo


class ItemsData(Wire):
    inventoryItems: ItemConnection


class Quantity(Wire):
    name: str
    quantity: Int


class Level(Wire):
    quantities: list[Quantity]


class LevelNode(Wire):
    # Absent when the id names something that is not an inventory item.
    id: str | None = None
    inventoryLevel: Level | None = None


class NodesData(Wire):
    nodes: list[LevelNode | None]


class LevelsNode(Wire):
    """An inventory item with its aliased levels (``at0``, ...; null: not stocked)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    id: str | None = None

    def level(self, index: int) -> Level | None:
        raw = (self.model_extra or {}).get(f"{LEVEL_ALIAS}{index}")
        return None if raw is None else Level.model_validate(raw)


class LevelsData(Wire):
    nodes: list[LevelsNode | None]


class UserError(Wire):
    code: str | None = None
    field: list[str] | None = None
    message: str

    def index(self) -> int | None:
        """The position in ``input.quantities`` the error is about, if it names one."""
        path = self.field or []  # e.g. ["input", "quantities", "2", "changeFromQuantity"]
        if len(path) >= 3 and path[:2] == ["input", "quantities"] and path[2].isdigit():
            return int(path[2])
        return None


class Group(Wire):
    id: str


class SetPayload(Wire):
    inventoryAdjustmentGroup: Group | None = None
    userErrors: list[UserError]


class SetData(Wire):
    inventorySetQuantities: SetPayload


@dataclass(frozen=True)
class Answer(Generic[D]):
    data: D | None
    errors: list[GraphQLError]
    cost: Cost | None

    @property
    def throttled(self) -> bool:
        return any(e.code == THROTTLED for e in self.errors)


def parser(model: type[D]) -> Callable[[httpx.Response], Answer[D]]:
    """A ``parse`` for HttpCaller: the envelope and, unless there are errors, its data."""

    def parse(response: httpx.Response) -> Answer[D]:
        try:
            envelope = Envelope.model_validate(orjson.loads(response.content))
            cost = envelope.extensions.cost if envelope.extensions else None
            if envelope.errors:
                return Answer(None, envelope.errors, cost)
            return Answer(model.model_validate(envelope.data), [], cost)
        except orjson.JSONDecodeError as exc:
            raise InvalidResponse(f"not JSON: {exc}") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(body)"
            raise InvalidResponse(f"{where}: {first['msg']}") from None

    return parse


def estimate(operation: str, items: int, locations: int = 1) -> float:
    """Requested cost before Shopify has told us: its published rules (a mutation is 10
    points, a connection 2 plus one per item asked for, an object 1)."""
    if operation == "set_available":
        return 10.0
    if operation == "lookup_items":
        return 2.0 + items
    return 1.0 + (1.0 + 2.0 * locations) * items  # nodes: item, level and quantities


def fitting(items: int, base: float, per_item: float, bucket_size: float | None) -> int:
    """How many of ``items`` one call may ask for so that its cost (``base`` plus
    ``per_item`` each) fits a bucket of ``bucket_size`` (None: not known yet): a call
    costing more than the whole bucket would be throttled for ever."""
    if bucket_size is None:
        return items
    return max(1, min(items, int((bucket_size - base) // per_item)))
