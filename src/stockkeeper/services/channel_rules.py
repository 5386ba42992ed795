"""Per-channel availability rules: the effective rule of a channel and SKU, the figure
it gives, run-time changes (stored, logged, and re-pushing the SKUs they affect), the
per-channel SKU state, and the resync of a channel.

The effective rule of a SKU on a channel: the channel's stored rule if the admin API
set one, else the rule in its config; then the SKU's stored override if there is one,
else the override in the config (docs/channels.md). The figure itself is the pure
:func:`stockkeeper.domain.availability.channel_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stockkeeper.config import AvailabilityRulesConfig, ChannelConfig, RuleOverrideConfig
from stockkeeper.domain.availability import (
    AvailabilityRule,
    RuleOverride,
    channel_figure,
    location_figures,
)
from stockkeeper.domain.errors import InvalidRequest, NotFound
from stockkeeper.services.unit import Clock, transaction
from stockkeeper.store import channel_locations as locations_repo
from stockkeeper.store import channel_rules as repo
from stockkeeper.store import stock
from stockkeeper.store.pool import Conn, Pool

PAGE = 500


def rule_of(cfg: AvailabilityRulesConfig) -> AvailabilityRule:
    return AvailabilityRule(
        None if cfg.locations is None else frozenset(cfg.locations),
        cfg.buffer,
        cfg.cap,
        cfg.share_percent,
    )


def override_of(cfg: RuleOverrideConfig) -> RuleOverride:
    return RuleOverride(
        None if cfg.locations is None else frozenset(cfg.locations),
        cfg.buffer,
        cfg.cap,
        cfg.share_percent,
        cfg.clear_cap,
    )


def passes_sales_through(rule: AvailabilityRule) -> bool:
    """Whether a sale on the channel moves its figure by exactly the units sold (every
    location, no cap, no share): only then may the channel's own change be left out."""
    return rule.locations is None and rule.cap is None and rule.share_percent == 100


async def _known_locations(conn: Conn, codes: Sequence[str]) -> None:
    """Refuse a rule naming a location no receipt, count or WMS ever named: a typo there
    would show the channel 0 of every SKU (D-446), as a reserve at an unknown location
    is refused (D-424)."""
    known = await stock.known_locations(conn, codes)
    unknown = [code for code in codes if code not in known]
    if unknown:
        raise InvalidRequest(f"unknown location: {', '.join(unknown)}", "body.locations")


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """A channel's rule as it stands, where it comes from, and its SKU overrides."""

    channel: str
    rule: AvailabilityRule
    source: str  # "config" or "stored"
    overrides: dict[str, tuple[RuleOverride, str]]  # sku -> (override, source)
    # Locations the rule, its overrides or the channel's location map name that no
    # receipt, count or WMS ever named (a typo in the config shows 0 there; D-449).
    unknown_locations: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleChanged:
    """A rule change and how many of the channel's SKUs it made due."""

    channel: str
    sku: str | None
    repushed: int


@dataclass(frozen=True, slots=True)
class SkuChannelState:
    state: repo.SkuState
    rule: AvailabilityRule
    # A channel with several locations: each location's figures, by location.
    locations: tuple[locations_repo.LocationState, ...] = ()


class RulesService:
    def __init__(self, pool: Pool, channels: Sequence[ChannelConfig], clock: Clock) -> None:
        self.pool = pool
        self.configs = {c.id: c for c in channels}
        self.clock = clock

    def _config(self, channel: str) -> ChannelConfig:
        cfg = self.configs.get(channel)
        if cfg is None:
            raise NotFound(f"no channel {channel!r} is configured")
        return cfg

    def _effective(
        self, channel: str, sku: str, stored: Mapping[tuple[str, str], repo.StoredRule]
    ) -> AvailabilityRule:
        cfg = self.configs[channel].rules
        own = stored.get((channel, repo.CHANNEL_ROW))
        base = own.as_rule() if own is not None else rule_of(cfg)
        mine = stored.get((channel, sku))
        if mine is not None:
            return base.overridden(mine.as_override())
        configured = cfg.skus.get(sku)
        return base.overridden(override_of(configured) if configured else None)

    # -- the propagation consumer's figure -------------------------------------------

    async def figures(
        self, conn: Conn, channels: Sequence[str], sku: str, available: int
    ) -> dict[str, tuple[int, AvailabilityRule]]:
        """Per channel, the figure it is shown for ``sku`` and the rule that gave it.
        ``available`` is the SKU's total; per-location figures are read only for a
        channel fed by some locations. Call after the SKU's sync rows are locked, so a
        rule change committed meanwhile is seen (its re-figuring held those rows)."""
        return (await self.figures_many(conn, channels, {sku: available}))[sku]

    async def figures_many(
        self, conn: Conn, channels: Sequence[str], available: Mapping[str, int]
    ) -> dict[str, dict[str, tuple[int, AvailabilityRule]]]:
        """:meth:`figures` for many SKUs (SKU → its total available) in at most two
        statements whatever their number: the rules, and the per-location figures if a
        channel is fed by some locations."""
        skus = list(available)
        stored = {(r.channel, r.sku): r for r in await repo.rules_for_skus(conn, channels, skus)}
        by_location: dict[str, dict[str, int]] | None = None
        out: dict[str, dict[str, tuple[int, AvailabilityRule]]] = {}
        for sku in skus:
            mine: dict[str, tuple[int, AvailabilityRule]] = {}
            for ch in channels:
                rule = self._effective(ch, sku, stored)
                mapping = self.configs[ch].location_map()
                if rule.locations is None and mapping is None:
                    mine[ch] = (channel_figure(rule, {"": available[sku]}), rule)
                    continue
                if by_location is None:
                    by_location = await repo.available_by_location(conn, skus, self.clock())
                mine[ch] = (self._figure(ch, rule, by_location[sku]), rule)
            out[sku] = mine
        return out

    def _figure(self, channel: str, rule: AvailabilityRule, held: Mapping[str, int]) -> int:
        """The SKU's figure on the channel: for one with several locations, the sum of
        each location's own figure (D-280)."""
        mapping = self.configs[channel].location_map()
        if mapping is None:
            return channel_figure(rule, held)
        return sum(location_figures(rule, mapping, held).values())

    async def located_figures(
        self, conn: Conn, channel: str, skus: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        """Per SKU, the figure at each location of a channel that has several (Shopify
        locations), from the stock each of our locations holds now and the SKU's
        effective rule (two statements whatever the number of SKUs)."""
        mapping = self.configs[channel].location_map()
        if mapping is None or not skus:
            return {}
        stored = {(r.channel, r.sku): r for r in await repo.rules_for_skus(conn, [channel], skus)}
        by_location = await repo.available_by_location(conn, skus, self.clock())
        return {
            sku: location_figures(self._effective(channel, sku, stored), mapping, by_location[sku])
            for sku in skus
        }

    # -- reading and changing the rules ----------------------------------------------

    async def rules(self, channel: str) -> ChannelRules:
        cfg = self._config(channel).rules
        async with self.pool.acquire() as conn:
            stored = await repo.rules_of_channel(conn, channel)
            own = next((r for r in stored if r.sku == repo.CHANNEL_ROW), None)
            overrides: dict[str, tuple[RuleOverride, str]] = {
                sku: (override_of(o), "config") for sku, o in cfg.skus.items()
            }
            for r in stored:
                if r.sku != repo.CHANNEL_ROW:
                    overrides[r.sku] = (r.as_override(), "stored")
            rule, source = (rule_of(cfg), "config") if own is None else (own.as_rule(), "stored")
            named = set(rule.locations or ())
            named.update(loc for o, _ in overrides.values() for loc in o.locations or ())
            for _, ours in self.configs[channel].location_map() or ():
                named.update(ours or ())
            known = await stock.known_locations(conn, named) if named else set()
        unknown = tuple(sorted(named - known))
        return ChannelRules(channel, rule, source, overrides, unknown)

    async def set_rule(self, channel: str, rule: AvailabilityRule, by: str) -> RuleChanged:
        """Store the channel's rule and re-push every SKU whose figure it changes."""
        self._config(channel)
        row = repo.StoredRule(
            channel,
            repo.CHANNEL_ROW,
            None if rule.locations is None else sorted(rule.locations),
            rule.buffer,
            rule.cap,
            rule.share_percent,
            False,
        )
        return await self._change(channel, repo.CHANNEL_ROW, row, by)

    async def set_override(
        self, channel: str, sku: str, override: RuleOverride, by: str
    ) -> RuleChanged:
        self._config(channel)
        row = repo.StoredRule(
            channel,
            sku,
            None if override.locations is None else sorted(override.locations),
            override.buffer,
            override.cap,
            override.share_percent,
            override.clear_cap,
        )
        return await self._change(channel, sku, row, by)

    async def clear_override(self, channel: str, sku: str, by: str) -> RuleChanged:
        self._config(channel)
        return await self._change(channel, sku, None, by)

    async def _change(
        self, channel: str, sku: str, row: repo.StoredRule | None, by: str
    ) -> RuleChanged:
        async with transaction(self.pool) as conn:
            if row is not None and row.locations:
                await _known_locations(conn, row.locations)
            before = await repo.lock_rule(conn, channel, sku)
            if row is None:
                if before is None:
                    raise NotFound(f"SKU {sku!r} has no stored override on {channel!r}")
                await repo.delete_rule(conn, channel, sku)
            else:
                await repo.put_rule(conn, row, by)
            skus = None if sku == repo.CHANNEL_ROW else [sku]
            repushed = await self._refigure(conn, channel, skus, force=False)
            await repo.log_change(
                conn,
                channel,
                sku,
                before.wire() if before else None,
                row.wire() if row else None,
                by,
                repushed,
            )
        return RuleChanged(channel, sku or None, repushed)

    async def changes(self, channel: str, after: int, limit: int) -> list[repo.RuleChange]:
        self._config(channel)
        async with self.pool.acquire() as conn:
            return await repo.changes(conn, channel, after, limit)

    async def sku_state(self, channel: str, sku: str) -> SkuChannelState:
        self._config(channel)
        async with self.pool.acquire() as conn:
            state = await repo.sku_state(conn, channel, sku)
            stored = {(r.channel, r.sku): r for r in await repo.rules_for_sku(conn, [channel], sku)}
            at = (await locations_repo.states(conn, channel, [sku])).get(sku, {})
        if state is None:
            raise NotFound(f"{channel!r} has no state for SKU {sku!r}")
        mapped = [gid for gid, _ in self.configs[channel].location_map() or ()]
        ordered = tuple(at[gid] for gid in mapped if gid in at)
        return SkuChannelState(state, self._effective(channel, sku, stored), ordered)

    # -- re-figuring -----------------------------------------------------------------

    async def resync(self, channel: str, skus: Sequence[str] | None) -> int:
        """Make every SKU (or ``skus``) due on the channel with its current figure, in
        pages, each its own transaction; how many are due."""
        self._config(channel)
        if skus is not None:
            async with transaction(self.pool) as conn:
                return await self._figure_page(conn, channel, sorted(set(skus)), force=True)
        due, after = 0, ""
        while True:
            async with transaction(self.pool) as conn:
                page = await repo.sku_page(conn, after, PAGE)
                if not page:
                    return due
                due += await self._figure_page(conn, channel, page, force=True)
            after = page[-1]

    async def catch_up(self, channel: str) -> int:
        """Re-figure the channel's SKUs whose figure was made under another rule than
        the one in force now (a config edit read at this start; D-447), in pages, each
        its own transaction; how many are due because of it. A SKU whose figure the
        new rule leaves alone only has its rule's text recorded. The SKUs with an
        override are re-figured every time (a few), the others where their figure's
        rule text is not the channel's."""
        self._config(channel)
        async with self.pool.acquire() as conn:
            stored = {(r.channel, r.sku): r for r in await repo.rules_of_channel(conn, channel)}
        own = stored.get((channel, repo.CHANNEL_ROW))
        base = own.as_rule() if own is not None else rule_of(self.configs[channel].rules)
        # A SKU given an override since may still show the channel's rule's text.
        overridden = sorted({*self.configs[channel].rules.skus, *(sku for _, sku in stored)})
        overridden = [sku for sku in overridden if sku != repo.CHANNEL_ROW]
        due, after = 0, ""
        for at in range(0, len(overridden), PAGE):
            async with transaction(self.pool) as conn:
                page = overridden[at : at + PAGE]
                due += await self._figure_page(conn, channel, page, force=False)
        while True:
            async with transaction(self.pool) as conn:
                page = await repo.rule_stale_page(conn, channel, base.describe(), after, PAGE)
                if not page:
                    return due
                due += await self._figure_page(conn, channel, page, force=False)
            after = page[-1]

    async def due(self, channel: str, skus: Sequence[str] | None) -> int:
        async with self.pool.acquire() as conn:
            return await repo.due_count(conn, channel, skus)

    async def _refigure(
        self, conn: Conn, channel: str, skus: Sequence[str] | None, *, force: bool
    ) -> int:
        if skus is not None:
            return await self._figure_page(conn, channel, skus, force=force)
        due, after = 0, ""
        while page := await repo.sku_page(conn, after, PAGE):
            due += await self._figure_page(conn, channel, page, force=force)
            after = page[-1]
        return due

    async def _figure_page(
        self, conn: Conn, channel: str, skus: Sequence[str], *, force: bool
    ) -> int:
        now = self.clock()
        levels = await stock.sku_levels(conn, skus, now)
        known = [s for s in skus if s in levels]
        stored = {(r.channel, r.sku): r for r in await repo.rules_of_channel(conn, channel)}
        rules = {sku: self._effective(channel, sku, stored) for sku in known}
        mapped = self.configs[channel].location_map() is not None
        located = [s for s in known if rules[s].locations is not None or mapped]
        by_location = await repo.available_by_location(conn, located, now) if located else {}
        figures = []
        for sku in known:
            rule = rules[sku]
            held = by_location[sku] if sku in by_location else {"": levels[sku].level.available}
            figures.append(
                repo.Figure(
                    sku, self._figure(channel, rule, held), rule.describe(), levels[sku].version
                )
            )
        moved = await self._moved(conn, channel, rules, by_location) if mapped else []
        return await repo.refigure(conn, channel, figures, force, moved)

    async def _moved(
        self,
        conn: Conn,
        channel: str,
        rules: Mapping[str, AvailabilityRule],
        by_location: Mapping[str, Mapping[str, int]],
    ) -> list[str]:
        """On a channel with several locations, the SKUs whose figure at some location
        differs from what that location shows as far as we know: a rule change can move
        the split and keep the sum (cap 8 to buffer 1 over 10 + 4 is 8 + 4 to 9 + 3),
        and the sum is all the sync row compares (D-445). A location that does not
        stock the item (shown None) cannot be set, so it moves nothing."""
        mapping = self.configs[channel].location_map()
        if mapping is None:
            return []
        sent = await locations_repo.states(conn, channel, list(rules))
        moved = []
        for sku, rule in rules.items():
            now = location_figures(rule, mapping, by_location[sku])
            was = sent.get(sku, {})
            if any(
                at.shown is not None and at.shown != now.get(gid, at.shown)
                for gid, at in was.items()
            ):
                moved.append(sku)
        return moved
