"""Rules of propagating availability to sales channels. Pure: no I/O, no SQL, no await.

Per channel and SKU we keep the newest level we know (*desired*) and what the channel
was last told (*pushed*). These rules decide what a new level means for one channel
(:func:`judge`) and when the sync lag is alarming (:func:`lag_alert`). How long a failed
push waits is the one retry policy, :class:`stockkeeper.domain.backoff.Backoff`, built
from ``propagation.backoff_base_ms`` and ``backoff_max_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SyncStatus(StrEnum):
    PENDING = "PENDING"  # a push is due (desired is newer than pushed)
    SYNCED = "SYNCED"  # the channel shows the newest level we know
    UNLISTED = "UNLISTED"  # the channel has no listing for the SKU: nothing to push
    DEAD = "DEAD"  # every attempt failed: a dead letter waits for an operator


class Verdict(StrEnum):
    """What a new level means for one channel."""

    STALE = "stale"  # not newer than a level we already know: dropped
    PUSH = "push"  # push it (joining a push already due, if there is one; or, for an
    # unlisted SKU whose recheck is due, probe whether the channel lists it now)
    ECHO = "echo"  # the change came from this channel, which already shows it
    NOOP = "noop"  # the channel already shows this quantity (reserved became committed)
    HELD = "held"  # newest level kept, not pushed (the channel does not list the SKU)


@dataclass(frozen=True, slots=True)
class SyncState:
    """One channel's sync state for one SKU. ``pushed_quantity`` None: never told."""

    desired_version: int
    pushed_version: int
    pushed_quantity: int | None
    status: SyncStatus
    # Seconds since the channel last said it does not list the SKU; None: not known.
    unlisted_for_s: float | None = None


def judge(
    state: SyncState,
    version: int,
    available: int,
    *,
    from_this_channel: bool,
    recheck_s: float | None = None,
) -> Verdict:
    """What level ``version`` of a SKU (``available`` to sell) means for a channel.

    Versions of a SKU are contiguous: every change writes the next one, and each carries
    the absolute figures. So a change from the channel itself can be left out exactly
    when the channel is known to show the level just before it: then the channel has
    already applied its own change (a sale) to what we told it. If a push to it is still
    due, or we never told it anything, leaving the change out would leave the channel
    showing stock that another change took, so the newest figure is pushed instead.
    A channel that shows the figure already needs no push either.

    A SKU the channel does not list is kept, not pushed, except that a new level probes
    it again (a push: listed now, it flows again) once ``recheck_s`` has passed since the
    channel last said so; ``recheck_s`` None: never.
    """
    if version <= state.desired_version:
        return Verdict.STALE
    if state.status is SyncStatus.UNLISTED:
        since = state.unlisted_for_s
        if recheck_s is not None and (since is None or since >= recheck_s):
            return Verdict.PUSH
        return Verdict.HELD
    in_sync = (
        state.status is SyncStatus.SYNCED
        and state.pushed_quantity is not None
        and state.pushed_version == state.desired_version == version - 1
    )
    if from_this_channel and in_sync:
        return Verdict.ECHO
    if state.status is SyncStatus.SYNCED and state.pushed_quantity == available:
        # Many changes leave availability alone (a confirm moves reserved to committed):
        # the channel already shows the figure, so there is nothing to send.
        return Verdict.NOOP
    return Verdict.PUSH


class AlertChange(StrEnum):
    FIRE = "fire"
    RECOVER = "recover"


def lag_alert(p99_ms: float | None, threshold_ms: float, alerting: bool) -> AlertChange | None:
    """Whether a channel's lag alert starts or ends: it fires when the p99 over the window
    passes the threshold, and ends when it is back at or under it (or nothing was pushed
    in the window). Stays as it is otherwise, so one episode is one alert."""
    over = p99_ms is not None and p99_ms > threshold_ms
    if over and not alerting:
        return AlertChange.FIRE
    if alerting and not over:
        return AlertChange.RECOVER
    return None
