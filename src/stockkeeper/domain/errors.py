"""Domain errors. Each carries a stable slug that the HTTP layer turns into a problem type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DomainError(Exception):
    """Base of every error the rules can raise."""

    slug = "conflict"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def extensions(self) -> dict[str, Any]:
        """Extra members for the problem document."""
        return {}


@dataclass(frozen=True, slots=True)
class Shortage:
    """One order line that cannot be served: what was asked and what is there."""

    sku: str
    requested: int
    available: int


class InsufficientStock(DomainError):
    slug = "insufficient-stock"

    def __init__(self, shortages: list[Shortage]) -> None:
        skus = ", ".join(s.sku for s in shortages)
        super().__init__(f"not enough stock for: {skus}")
        self.shortages = shortages

    def extensions(self) -> dict[str, Any]:
        return {
            "shortages": [
                {"sku": s.sku, "requested": s.requested, "available": s.available}
                for s in self.shortages
            ]
        }


class ReservationExpired(DomainError):
    slug = "reservation-expired"


class Conflict(DomainError):
    """The request contradicts the current state (wrong status, reused reference, lost race)."""

    slug = "conflict"


class TryAgain(Conflict):
    """A conflict of the moment, not of the request: a race lost to another request, a
    decision not made yet. The same request may well succeed shortly, so it is 409
    ``conflict`` like any other but an Idempotency-Key does not keep it (D-479): a retry
    with the same key runs again instead of replaying this answer."""


class NotFound(DomainError):
    slug = "not-found"


class InvalidRequest(DomainError):
    """Well-formed input that the rules reject (unknown SKU, ambiguous batch, negative stock).

    ``field`` names the input at fault as the HTTP answer's ``errors`` does (``body.lines``,
    ``query.after``), or is None when no one input is (D-390).
    """

    slug = "validation"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field

    def extensions(self) -> dict[str, Any]:
        return {"errors": [{"field": self.field, "message": self.detail}]}
