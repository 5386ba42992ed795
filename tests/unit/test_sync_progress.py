"""A WMS sync request's percentage and ETA (domain/wms.sync_progress)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stockkeeper.domain.wms import SyncProgress, sync_progress

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_in_progress_with_a_total_has_a_percentage_and_an_eta_at_the_rate_so_far() -> None:
    now = T0 + timedelta(seconds=10)
    assert sync_progress("IN_PROGRESS", 250, 1000, T0, None, now) == SyncProgress(1000, 25.0, 30.0)


def test_without_a_total_there_is_neither_and_done_is_done() -> None:
    now = T0 + timedelta(seconds=10)
    assert sync_progress("IN_PROGRESS", 250, None, T0, None, now) == SyncProgress(None, None, None)
    assert sync_progress("DONE", 990, 1000, T0, now, now) == SyncProgress(1000, 100.0, 0.0)
    assert sync_progress("DONE", 5, None, T0, now, now) == SyncProgress(None, None, 0.0)


def test_pending_failed_and_overshoot() -> None:
    now = T0 + timedelta(seconds=10)
    assert sync_progress("PENDING", 0, 100, None, None, now) == SyncProgress(100, 0.0, None)
    assert sync_progress("FAILED", 40, 100, T0, now, now) == SyncProgress(100, 40.0, None)
    # Rows added while we paged: never past 100 %.
    assert sync_progress("IN_PROGRESS", 120, 100, T0, None, now) == SyncProgress(100, 100.0, 0.0)
    assert sync_progress("IN_PROGRESS", 0, 0, T0, None, now) == SyncProgress(0, 100.0, 0.0)
