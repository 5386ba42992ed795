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


def estimate(operation: str, items: int) -> float:
    """Requested cost before Shopify has told us: its published rules (a mutation is 10
    points, a connection 2 plus one per item asked for, an object 1)."""
    if operation == "set_available":
        return 10.0
    if operation == "lookup_items":
        return 2.0 + items
    return 1.0 + 3.0 * items  # nodes: item, level, quantities per id


def fitting(items: int, base: float, per_item: float, bucket_size: float | None) -> int:
    """How many of ``items`` one call may ask for so that its cost (``base`` plus
    ``per_item`` each) fits a bucket of ``bucket_size`` (None: not known yet): a call
    costing more than the whole bucket would be throttled for ever."""
    if bucket_size is None:
        return items
    return max(1, min(items, int((bucket_size - base) // per_item)))
