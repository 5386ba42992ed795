"""admin-api: per-channel availability rules and one SKU's state on a channel.

``GET/PUT /admin/channels/{channel}/rules``, ``PUT/DELETE
/admin/channels/{channel}/rules/skus/{sku}`` (a SKU's override), ``GET
/admin/channels/{channel}/rules/changes`` (the change log) and ``GET
/admin/channels/{channel}/skus/{sku}`` (the figure pushed and the rule behind it).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Path, Query
from pydantic import BaseModel, Field, model_validator
from starlette.responses import Response

from stockkeeper.api import schemas
from stockkeeper.api.auth import Principal, require
from stockkeeper.api.common import ConnectorId
from stockkeeper.api.problems import ApiProblem, JSONResponse
from stockkeeper.domain.availability import AvailabilityRule, RuleOverride
from stockkeeper.domain.quantities import MAX_QUANTITY

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container
    from stockkeeper.services.channel_rules import SkuChannelState

ADMIN = Depends(require("admin"))
Channel = ConnectorId
SkuPath = Annotated[str, Path(min_length=1, max_length=128)]
Units = Annotated[int, Field(strict=True, ge=0, le=MAX_QUANTITY)]
Locations = Annotated[list[schemas.LocationCode], Field(max_length=1000)]
Share = Annotated[int, Field(strict=True, ge=0, le=100)]


class RuleIn(schemas.Body):
    """A channel's whole rule: ``locations`` null feeds it from every location, ``cap``
    null shows no more than the share gives."""

    locations: Locations | None = None
    buffer: Units = 0
    cap: Units | None = None
    share_percent: Share = 100

    def rule(self) -> AvailabilityRule:
        where = None if self.locations is None else frozenset(self.locations)
        return AvailabilityRule(where, self.buffer, self.cap, self.share_percent)


class OverrideIn(schemas.Body):
    """A SKU's override: every field left out (or null) keeps the channel's value;
    ``clear_cap`` lifts the channel's cap for the SKU."""

    locations: Locations | None = None
    buffer: Units | None = None
    cap: Units | None = None
    share_percent: Share | None = None
    clear_cap: bool = False

    @model_validator(mode="after")
    def _one_cap(self) -> OverrideIn:
        if self.clear_cap and self.cap is not None:
            raise ValueError("cap and clear_cap: true together: give one (D-446)")
        return self

    def override(self) -> RuleOverride:
        where = None if self.locations is None else frozenset(self.locations)
        return RuleOverride(where, self.buffer, self.cap, self.share_percent, self.clear_cap)


class RuleOut(BaseModel):
    locations: list[str] | None
    buffer: int
    cap: int | None
    share_percent: int


class OverrideOut(BaseModel):
    sku: str
    locations: list[str] | None
    buffer: int | None
    cap: int | None
    share_percent: int | None
    clear_cap: bool
    source: str


class ChannelRulesOut(BaseModel):
    channel: str
    rule: RuleOut
    source: str = Field(description="config, or stored (set through this API)")
    overrides: list[OverrideOut]
    unknown_locations: list[str] = Field(
        description="locations the rule, its overrides or the channel's location map name "
        "that no receipt, count or WMS ever named: they feed the channel nothing"
    )


class RuleChangedOut(BaseModel):
    channel: str
    sku: str | None
    repushed: int = Field(description="SKUs whose figure changed and are due again")


class RuleChangeOut(BaseModel):
    id: int
    sku: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    changed_by: str
    changed_at: datetime
    repushed: int


class RuleChangesOut(BaseModel):
    channel: str
    items: list[RuleChangeOut]
    next: int | None


class LocationFigureOut(BaseModel):
    location_id: str = Field(description="the channel's location (a Shopify location gid)")
    desired_quantity: int = Field(description="the figure last computed and sent there")
    pushed_quantity: int | None = Field(
        description="what the location shows as far as we know (acknowledged or read back)"
    )
    pushed_at: datetime | None


class ChannelSkuOut(BaseModel):
    channel: str
    sku: str
    status: str
    desired_version: int
    desired_quantity: int = Field(description="what the channel's rule says it is shown")
    desired_rule: str | None = Field(description="the rule that produced desired_quantity")
    pushed_version: int
    pushed_quantity: int | None = Field(description="what the channel was last told")
    pushed_at: datetime | None
    attempts: int
    last_error: str | None
    channel_ref: str | None
    pending_since: datetime | None
    updated_at: datetime
    rule: RuleOut = Field(description="the SKU's effective rule now")
    locations: list[LocationFigureOut] = Field(
        default_factory=list,
        description="a channel with several locations (Shopify): the figure at each",
    )


def _rule_out(rule: AvailabilityRule) -> RuleOut:
    where = None if rule.locations is None else sorted(rule.locations)
    return RuleOut(
        locations=where, buffer=rule.buffer, cap=rule.cap, share_percent=rule.share_percent
    )


def _sku_out(found: SkuChannelState) -> ChannelSkuOut:
    s = found.state
    return ChannelSkuOut(
        channel=s.channel,
        sku=s.sku,
        status=s.status,
        desired_version=s.desired_version,
        desired_quantity=s.desired_quantity,
        desired_rule=s.desired_rule,
        pushed_version=s.pushed_version,
        pushed_quantity=s.pushed_quantity,
        pushed_at=s.pushed_at,
        attempts=s.attempts,
        last_error=s.last_error,
        channel_ref=s.channel_ref,
        pending_since=s.pending_since,
        updated_at=s.updated_at,
        rule=_rule_out(found.rule),
        locations=[
            LocationFigureOut(
                location_id=at.location_id,
                desired_quantity=at.figure,
                pushed_quantity=at.shown,
                pushed_at=at.pushed_at,
            )
            for at in found.locations
        ],
    )


def _ok(model: BaseModel) -> Response:
    return JSONResponse(schemas.as_json(model))


def add_rule_routes(app: FastAPI, container: Container) -> None:
    """The rules endpoints, on the admin app."""
    rules = container.propagation.rules
    tags: list[str | Any] = ["channel rules"]

    @app.get(
        "/admin/channels/{channel}/rules",
        response_model=ChannelRulesOut,
        responses=schemas.problems(404, 422),
        summary="A channel's availability rule and its SKU overrides",
        tags=tags,
    )
    async def get_rules(channel: Channel, who: Principal = ADMIN) -> Response:
        """The rule the channel is shown by, where it comes from (the config, or stored
        through this API), and every SKU override."""
        found = await rules.rules(channel)
        overrides = [
            OverrideOut(
                sku=sku,
                locations=None if o.locations is None else sorted(o.locations),
                buffer=o.buffer,
                cap=o.cap,
                share_percent=o.share_percent,
                clear_cap=o.clear_cap,
                source=source,
            )
            for sku, (o, source) in sorted(found.overrides.items())
        ]
        return _ok(
            ChannelRulesOut(
                channel=found.channel,
                rule=_rule_out(found.rule),
                source=found.source,
                overrides=overrides,
                unknown_locations=list(found.unknown_locations),
            )
        )

    @app.put(
        "/admin/channels/{channel}/rules",
        response_model=RuleChangedOut,
        responses=schemas.problems(404, 422),
        summary="Set a channel's availability rule",
        tags=tags,
    )
    async def put_rules(channel: Channel, body: RuleIn, who: Principal = ADMIN) -> Response:
        """Store the channel's rule (it wins over the config from now on), log the change,
        and make every SKU whose figure it changes due again."""
        changed = await rules.set_rule(channel, body.rule(), who.name)
        return _ok(RuleChangedOut(channel=changed.channel, sku=None, repushed=changed.repushed))

    @app.put(
        "/admin/channels/{channel}/rules/skus/{sku:path}",
        response_model=RuleChangedOut,
        responses=schemas.problems(404, 422),
        summary="Set a SKU's override of the channel's rule",
        tags=tags,
    )
    async def put_override(
        channel: Channel, sku: SkuPath, body: OverrideIn, who: Principal = ADMIN
    ) -> Response:
        """Store the SKU's override, log the change, and push the SKU again if its
        figure changes."""
        try:
            schemas.printable(sku)
        except ValueError as exc:
            raise ApiProblem.invalid("sku", f"sku: {exc}") from None
        changed = await rules.set_override(channel, sku, body.override(), who.name)
        return _ok(RuleChangedOut(channel=changed.channel, sku=sku, repushed=changed.repushed))

    @app.delete(
        "/admin/channels/{channel}/rules/skus/{sku:path}",
        response_model=RuleChangedOut,
        responses=schemas.problems(404, 422),
        summary="Remove a SKU's stored override",
        tags=tags,
    )
    async def delete_override(channel: Channel, sku: SkuPath, who: Principal = ADMIN) -> Response:
        """The SKU goes back to the channel's rule (or the config's override for it)."""
        changed = await rules.clear_override(channel, sku, who.name)
        return _ok(RuleChangedOut(channel=changed.channel, sku=sku, repushed=changed.repushed))

    @app.get(
        "/admin/channels/{channel}/rules/changes",
        response_model=RuleChangesOut,
        responses=schemas.problems(404, 422),
        summary="The change log of a channel's rules",
        tags=tags,
    )
    async def rule_changes(
        channel: Channel,
        after: Annotated[int, Query(ge=0, le=schemas.MAX_ROW_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """Every change, oldest first (keyset: ``after``): who, when, before and after."""
        found = await rules.changes(channel, after, limit + 1)
        more = len(found) > limit
        found = found[:limit]
        items = [
            RuleChangeOut(
                id=c.id,
                sku=c.sku or None,
                before=c.before,
                after=c.after,
                changed_by=c.changed_by,
                changed_at=c.changed_at,
                repushed=c.repushed,
            )
            for c in found
        ]
        return _ok(
            RuleChangesOut(channel=channel, items=items, next=found[-1].id if more else None)
        )

    @app.get(
        "/admin/channels/{channel}/skus/{sku:path}",
        response_model=ChannelSkuOut,
        responses=schemas.problems(404, 422),
        summary="One SKU's state on a channel",
        tags=tags,
    )
    async def channel_sku(channel: Channel, sku: SkuPath, who: Principal = ADMIN) -> Response:
        """What the channel is to be shown (and by which rule), what it was last told,
        and the SKU's effective rule now."""
        return _ok(_sku_out(await rules.sku_state(channel, sku)))
