"""What every body is made of: the one rule for the characters of an id, the id and
quantity types built on it, the strict base of every request body (``Body``), and
``as_json``, how a response model becomes its JSON body."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from stockkeeper.domain.ids import (
    MAX_ROW_ID,
    REFUSED_CATEGORIES,
    printable,
    printable_part,
    printable_text,
)
from stockkeeper.domain.instants import RANGE_TEXT, in_range
from stockkeeper.domain.quantities import MAX_QUANTITY

__all__ = [
    "ID_PART",
    "ID_TEXT",
    "MAX_ROW_ID",
    "PRINTABLE",
    "REFUSED_CATEGORIES",
    "SHORT_TEXT",
    "Body",
    "Instant",
    "LocationCode",
    "LotNumber",
    "OrderId",
    "Quantity",
    "Reason",
    "ReferenceId",
    "Sku",
    "as_json",
    "printable",
    "printable_part",
    "printable_text",
    "storable",
]

# The one rule for the characters of an id lives in the domain (domain/ids.py), shared
# with the connectors' records; here it becomes the validators of every id field.
PRINTABLE = (
    "printable text without surrounding whitespace; no control, zero-width, bidi-control "
    "or line/paragraph separator characters"
)


def storable(value: str) -> str:
    """Free text (a reason): anything but U+0000, which PostgreSQL's text cannot hold,
    so the request is a 422 and not a 500 from the database (D-399)."""
    if "\x00" in value:
        raise ValueError("must not contain U+0000 (NULL)")
    return value


# Every id-like text is Annotated[str, Field(min_length=1, max_length=N, ...), ID_TEXT].
ID_TEXT = AfterValidator(printable)
ID_PART = AfterValidator(printable_part)
# The short texts beside the ids (an address): the id's characters, but "." may be one.
SHORT_TEXT = AfterValidator(printable_text)
Sku = Annotated[str, Field(min_length=1, max_length=128, description=PRINTABLE), ID_TEXT]
OrderId = Annotated[str, Field(min_length=1, max_length=128, description=PRINTABLE), ID_TEXT]
ReferenceId = Annotated[str, Field(min_length=1, max_length=200, description=PRINTABLE), ID_TEXT]
LocationCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
LotNumber = Annotated[str, Field(min_length=1, max_length=128, description=PRINTABLE), ID_TEXT]
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
Reason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(storable)]
# A time in a body: with its offset, and one the database can store (D-481).
INSTANT = f"RFC 3339 with an offset, {RANGE_TEXT}"
Instant = Annotated[AwareDatetime, Field(description=INSTANT), AfterValidator(in_range)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def as_json(model: BaseModel) -> dict[str, Any]:
    """A response model as its JSON body; optional members never set are left out."""
    return model.model_dump(mode="json", exclude_unset=True)
