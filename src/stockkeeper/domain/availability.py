"""Per-channel availability rules: what figure a channel is shown. Pure: no I/O.

A channel is not always shown everything we could sell: it may be fed by some locations
only, hold back a *buffer* (the last units, kept for other channels), never show more
than a *cap*, or show only a *share* (a percentage) of what its locations hold. Each of
these can be overridden per SKU. The order of operations is fixed and documented in
docs/channels.md:

    fed     = sum of available over the locations that feed the channel (each >= 0)
    shared  = floor(fed * share_percent / 100)
    capped  = min(cap, shared)          (no cap: shared)
    figure  = max(0, capped - buffer)

So the figure is never negative, never above the cap and never above what the feeding
locations hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class AvailabilityRule:
    """One channel's rule (or one SKU's, once its override is applied).

    ``locations`` None means every location feeds the channel."""

    locations: frozenset[str] | None = None
    buffer: int = 0
    cap: int | None = None
    share_percent: int = 100

    def __post_init__(self) -> None:
        if self.buffer < 0:
            raise ValueError("buffer must not be negative")
        if self.cap is not None and self.cap < 0:
            raise ValueError("cap must not be negative")
        if not 0 <= self.share_percent <= 100:
            raise ValueError("share_percent must be between 0 and 100")

    def overridden(self, override: RuleOverride | None) -> AvailabilityRule:
        """This rule with a SKU's override applied: each field the override sets wins."""
        if override is None:
            return self
        return replace(
            self,
            locations=self.locations if override.locations is None else override.locations,
            buffer=self.buffer if override.buffer is None else override.buffer,
            cap=self.cap if override.cap is None and not override.clear_cap else override.cap,
            share_percent=(
                self.share_percent if override.share_percent is None else override.share_percent
            ),
        )

    def describe(self) -> str:
        """A short text of the rule, for the per-channel SKU state and logs."""
        where = "all" if self.locations is None else ",".join(sorted(self.locations)) or "none"
        cap = "none" if self.cap is None else str(self.cap)
        return f"locations={where} share={self.share_percent}% cap={cap} buffer={self.buffer}"


@dataclass(frozen=True, slots=True)
class RuleOverride:
    """A SKU's override of its channel's rule; None leaves the channel's value.
    ``clear_cap`` lifts the channel's cap for this SKU."""

    locations: frozenset[str] | None = None
    buffer: int | None = None
    cap: int | None = None
    share_percent: int | None = None
    clear_cap: bool = False


def channel_figure(rule: AvailabilityRule, available_by_location: Mapping[str, int]) -> int:
    """The figure a channel is shown for a SKU under ``rule``, from what each location
    has available (a negative figure counts as nothing)."""
    fed = sum(
        max(0, quantity)
        for location, quantity in available_by_location.items()
        if rule.locations is None or location in rule.locations
    )
    shared = fed * rule.share_percent // 100
    capped = shared if rule.cap is None else min(rule.cap, shared)
    return max(0, capped - rule.buffer)


def location_figures(
    rule: AvailabilityRule,
    mapping: Sequence[tuple[str, frozenset[str] | None]],
    available_by_location: Mapping[str, int],
) -> dict[str, int]:
    """Per location of a channel that has several (Shopify's), its figure under ``rule``:
    the rule applied whole (share, cap, buffer) to the locations of ours mapped to it
    that also feed the channel. ``mapping`` is (channel location, ours feeding it, None:
    all). Each figure obeys the rule on its own, so their sum never exceeds what the
    feeding locations hold."""
    out: dict[str, int] = {}
    for channel_location, ours in mapping:
        if ours is None:
            feeding = rule.locations
        elif rule.locations is None:
            feeding = ours
        else:
            feeding = ours & rule.locations
        restricted = replace(rule, locations=feeding)
        out[channel_location] = channel_figure(restricted, available_by_location)
    return out
