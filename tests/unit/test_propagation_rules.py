"""The propagation rules: what a new level means for a channel, backoff, the lag alert."""

from __future__ import annotations

import pytest

from stockkeeper.domain.backoff import Backoff
from stockkeeper.domain.propagation import (
    AlertChange,
    SyncState,
    SyncStatus,
    Verdict,
    judge,
    lag_alert,
)

NEVER_TOLD = SyncState(0, 0, None, SyncStatus.SYNCED)
IN_SYNC_AT_4 = SyncState(4, 4, 10, SyncStatus.SYNCED)
DUE_AT_4 = SyncState(4, 3, 12, SyncStatus.PENDING)
# What Propagation builds from propagation.backoff_base_ms 1000 and backoff_max_ms 30000.
PUSH_BACKOFF = Backoff(1.0, 30.0)


def test_a_level_not_newer_than_what_we_know_is_stale() -> None:
    assert judge(IN_SYNC_AT_4, 4, 7, from_this_channel=False) is Verdict.STALE
    assert judge(IN_SYNC_AT_4, 3, 7, from_this_channel=False) is Verdict.STALE
    assert judge(DUE_AT_4, 2, 7, from_this_channel=True) is Verdict.STALE


def test_a_newer_level_is_pushed() -> None:
    assert judge(IN_SYNC_AT_4, 5, 7, from_this_channel=False) is Verdict.PUSH
    assert judge(IN_SYNC_AT_4, 9, 7, from_this_channel=False) is Verdict.PUSH
    assert judge(NEVER_TOLD, 1, 7, from_this_channel=False) is Verdict.PUSH


def test_a_newer_level_joins_a_push_already_due() -> None:
    assert judge(DUE_AT_4, 5, 3, from_this_channel=False) is Verdict.PUSH


def test_the_channels_own_change_is_not_sent_back_when_it_was_in_sync() -> None:
    assert judge(IN_SYNC_AT_4, 5, 9, from_this_channel=True) is Verdict.ECHO


def test_the_channels_own_change_is_pushed_when_another_change_is_still_due() -> None:
    # The channel shows version 3's figure less its sale; version 4 (someone else's
    # change) has not reached it. Leaving version 5 out would leave 4's change out too.
    assert judge(DUE_AT_4, 5, 9, from_this_channel=True) is Verdict.PUSH


def test_the_channels_own_change_is_pushed_after_a_gap_in_versions() -> None:
    # Version 5 never reached us (still in flight, say): the channel misses it.
    assert judge(IN_SYNC_AT_4, 6, 9, from_this_channel=True) is Verdict.PUSH


def test_the_channels_own_change_is_pushed_when_we_never_told_it_anything() -> None:
    assert judge(NEVER_TOLD, 1, 9, from_this_channel=True) is Verdict.PUSH


def test_a_level_the_channel_already_shows_needs_no_push() -> None:
    # A confirm moves reserved to committed: a new version, the same availability.
    assert judge(IN_SYNC_AT_4, 5, 10, from_this_channel=False) is Verdict.NOOP
    # ... but not when a different figure is still due to go out.
    assert judge(DUE_AT_4, 5, 12, from_this_channel=False) is Verdict.PUSH


def test_an_unlisted_sku_keeps_the_newest_level_without_a_push() -> None:
    unlisted = SyncState(4, 0, None, SyncStatus.UNLISTED)
    assert judge(unlisted, 5, 7, from_this_channel=False) is Verdict.HELD
    assert judge(unlisted, 4, 7, from_this_channel=False) is Verdict.STALE


def test_an_unlisted_sku_is_probed_again_once_its_recheck_is_due() -> None:
    unlisted = SyncState(4, 0, None, SyncStatus.UNLISTED, unlisted_for_s=30.0)
    assert judge(unlisted, 5, 7, from_this_channel=False, recheck_s=60) is Verdict.HELD
    assert judge(unlisted, 5, 7, from_this_channel=False, recheck_s=30) is Verdict.PUSH
    never_said = SyncState(4, 0, None, SyncStatus.UNLISTED)
    assert judge(never_said, 5, 7, from_this_channel=False, recheck_s=60) is Verdict.PUSH
    assert judge(unlisted, 4, 7, from_this_channel=False, recheck_s=0) is Verdict.STALE


def test_a_dead_push_is_revived_by_a_newer_level() -> None:
    dead = SyncState(4, 2, 5, SyncStatus.DEAD)
    assert judge(dead, 5, 7, from_this_channel=False) is Verdict.PUSH


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (20, 30.0)],
)
def test_backoff_doubles_from_the_base_up_to_the_cap(attempt: int, expected: float) -> None:
    assert PUSH_BACKOFF.delay(attempt) == expected


def test_backoff_is_never_sooner_than_retry_after() -> None:
    assert PUSH_BACKOFF.delay(1, retry_after_s=7.5) == 7.5
    assert PUSH_BACKOFF.delay(5, retry_after_s=2.0) == 16.0


def test_the_lag_alert_fires_once_per_episode_and_recovers() -> None:
    assert lag_alert(5001, 5000, alerting=False) is AlertChange.FIRE
    assert lag_alert(9000, 5000, alerting=True) is None
    assert lag_alert(5000, 5000, alerting=True) is AlertChange.RECOVER
    assert lag_alert(10, 5000, alerting=False) is None


def test_no_samples_means_no_alert() -> None:
    assert lag_alert(None, 5000, alerting=False) is None
    assert lag_alert(None, 5000, alerting=True) is AlertChange.RECOVER
