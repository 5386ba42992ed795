"""The records every source adapter produces, validated strictly.

An adapter (ERP rows, a webhook body, a marketplace delta page) turns its format into
these; they travel in ``ingest.<connector>`` messages and the ingest worker validates
them again on arrival (a message is outside input too). One bad record never sinks the
others: ``parse_records`` sorts them into good ones and refusals with their reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from stockkeeper.domain.ids import printable
from stockkeeper.domain.ingest import Level, Sale
from stockkeeper.domain.instants import in_range
from stockkeeper.domain.quantities import MAX_QUANTITY

# Ids follow the API's rule whichever door they come in by (D-399): "A\u200bB" is never a
# second SKU beside "AB", and U+0000 never reaches PostgreSQL.
ID = AfterValidator(printable)
Sku = Annotated[str, Field(min_length=1, max_length=128), ID]
LocationCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PRICE_STEP = Decimal("0.0001")


def _four_places(value: Any) -> Any:
    """A source price with more than four decimals (0.00125 a screw) is rounded half up
    to four, as stored; the level it comes with is not refused for it (D-484). The
    Decimal made here is what the field's strict check then takes."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return value  # not a number: the field's check says so
    exponent = d.as_tuple().exponent
    if d.is_finite() and isinstance(exponent, int) and exponent < -4:
        return d.quantize(PRICE_STEP, rounding=ROUND_HALF_UP)
    return d


class LevelRecord(_Strict):
    """An absolute level: ``on_hand`` of a SKU (at a location) as of the source's time."""

    sku: Sku
    location: LocationCode = "default"
    on_hand: Annotated[int, Field(ge=0, le=MAX_QUANTITY)]
    source_updated_at: Annotated[AwareDatetime, AfterValidator(in_range)]
    price: (
        Annotated[
            Decimal,
            BeforeValidator(_four_places),
            Field(ge=0, max_digits=14, decimal_places=4),
        ]
        | None
    ) = None

    def level(self, connector: str) -> Level:
        return Level(
            connector, self.sku, self.location, self.on_hand, self.source_updated_at, self.price
        )


class SaleRecord(_Strict):
    """A sale (negative delta) or return (positive) reported by a channel."""

    transaction_id: Annotated[str, Field(min_length=1, max_length=200), ID]
    sku: Sku
    delta: Annotated[int, Field(ge=-MAX_QUANTITY, le=MAX_QUANTITY)]
    source: Annotated[str, Field(min_length=1, max_length=64), ID]

    def sale(self) -> Sale:
        return Sale(self.source, self.transaction_id, self.sku, self.delta)


@dataclass(frozen=True, slots=True)
class Refused:
    """A record that failed validation: what came, and why; ``kind`` when it is one of
    our own level or sale records (so a dead letter of it can be ingested again, D-386),
    None when it is still in its source's format."""

    raw: Any
    error: str
    kind: Literal["level", "sale"] | None = None


def _reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(record)"
    return f"{where}: {err['msg']}"


def _json(item: Any) -> bytes:
    # Strict validation in JSON mode: "5" is not 5, but an ISO string is a time.
    return orjson.dumps(item, default=str)


R = TypeVar("R", bound=_Strict)

_LEVELS: TypeAdapter[list[LevelRecord]] = TypeAdapter(list[LevelRecord])
_SALES: TypeAdapter[list[SaleRecord]] = TypeAdapter(list[SaleRecord])


def _validated(raw: Sequence[Any], adapter: TypeAdapter[list[R]], model: type[R]) -> list[R | str]:
    """Per record, in order: the record, or why it is refused (the reason its own
    validation gives). A page is validated in one call (D-331); only when that fails
    are the records it names set aside and the rest validated again in one call."""
    try:
        return list(adapter.validate_json(orjson.dumps(list(raw), default=str)))
    except ValidationError as exc:
        errors = exc.errors()
    except TypeError:  # a value orjson cannot write: record by record
        return _one_by_one(raw, model)
    reasons: dict[int, str] = {}
    for err in errors:
        loc = err["loc"]
        if not loc or not isinstance(loc[0], int):
            return _one_by_one(raw, model)
        if loc[0] not in reasons:
            where = ".".join(str(p) for p in loc[1:]) or "(record)"
            reasons[loc[0]] = f"{where}: {err['msg']}"
    rest = [item for i, item in enumerate(raw) if i not in reasons]
    try:
        good = iter(adapter.validate_json(orjson.dumps(rest, default=str)))
    except (ValidationError, TypeError):
        return _one_by_one(raw, model)
    return [reasons[i] if i in reasons else next(good) for i in range(len(raw))]


def _one_by_one(raw: Sequence[Any], model: type[R]) -> list[R | str]:
    out: list[R | str] = []
    for item in raw:
        try:
            out.append(model.model_validate_json(_json(item)))
        except ValidationError as exc:
            out.append(_reason(exc))
        except TypeError as exc:
            # A value JSON cannot carry, such as an integer past 64 bits (an ERP's
            # numeric(38,10), a negated u64 quantity): this record is refused, the rest
            # of its page goes on (D-484).
            out.append(f"(record): {exc}")
    return out


def parse_levels(raw: Sequence[Any]) -> tuple[list[LevelRecord], list[Refused]]:
    good: list[LevelRecord] = []
    bad: list[Refused] = []
    for item, result in zip(raw, _validated(raw, _LEVELS, LevelRecord), strict=True):
        if isinstance(result, str):
            bad.append(Refused(item, result, "level"))
        else:
            good.append(result)
    return good, bad


def parse_sales(raw: Sequence[Any]) -> tuple[list[SaleRecord], list[Refused]]:
    good: list[SaleRecord] = []
    bad: list[Refused] = []
    for item, result in zip(raw, _validated(raw, _SALES, SaleRecord), strict=True):
        if isinstance(result, str):
            bad.append(Refused(item, result, "sale"))
        elif result.delta == 0:
            bad.append(Refused(item, "delta: must not be 0", "sale"))
        else:
            good.append(result)
    return good, bad


def levels_json(records: Sequence[LevelRecord]) -> list[dict[str, Any]]:
    """:func:`level_json` of each, in one call."""
    out: list[dict[str, Any]] = _LEVELS.dump_python(list(records), mode="json", exclude_none=True)
    return out


def level_json(r: LevelRecord) -> dict[str, Any]:
    return r.model_dump(mode="json", exclude_none=True)


def sale_json(r: SaleRecord) -> dict[str, Any]:
    return r.model_dump(mode="json")
