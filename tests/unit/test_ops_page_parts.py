"""The ops page's pure parts: the lag chart's geometry, dead letters beside prefixed
queue names, CSRF tokens, and the list cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stockkeeper.api.auth import Principal
from stockkeeper.api.ui.pages import CHART_H, CHART_W, dead_per_queue, lag_chart
from stockkeeper.api.ui.session import Session
from stockkeeper.domain.errors import InvalidRequest
from stockkeeper.services.listing import _after_id, _after_pair, _pair

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_the_chart_spans_the_hour_and_scales_to_the_highest_p99() -> None:
    points = [
        {"at": (NOW - timedelta(minutes=60)).isoformat(), "p50_ms": 10.0, "p99_ms": 50.0},
        {"at": (NOW - timedelta(minutes=30)).isoformat(), "p50_ms": 20.0, "p99_ms": 100.0},
        {"at": NOW.isoformat(), "p50_ms": 0.0, "p99_ms": 0.0},
    ]
    chart = lag_chart(points, NOW)
    xs = [x for x, _, _ in chart["dots"]]
    assert xs == [0.0, CHART_W / 2, CHART_W]
    assert chart["top_ms"] == 100.0
    top_y = chart["dots"][1][2]
    assert top_y == pytest.approx(4.0)  # the highest p99 touches the top (2 px inside)
    assert chart["dots"][2][1] == pytest.approx(CHART_H - 2)  # zero sits on the bottom
    assert chart["p99"].count(",") == 3


def test_an_empty_hour_draws_nothing() -> None:
    chart = lag_chart([], NOW)
    assert chart["n"] == 0
    assert chart["p50"] == ""


def test_dead_letters_are_shown_beside_their_prefixed_queue() -> None:
    depths = {"p1.wms.outbound": 3, "p1.channel.propagation": 0}
    assert dead_per_queue(depths, {"wms.outbound": 2}) == {"p1.wms.outbound": 2}
    assert dead_per_queue({"wms.outbound": 1}, {"wms.outbound": 4}) == {"wms.outbound": 4}


def test_csrf_tokens_and_flash_signatures_are_the_sessions_own() -> None:
    who = Principal("ops", frozenset({"admin"}))
    one, again = Session("s1", "a", who), Session("s1", "a", who)
    assert one.csrf == again.csrf
    assert len(one.csrf) == 64
    assert one.csrf != Session("s2", "a", who).csrf  # another session of the token
    assert one.csrf != Session("s1", "b", who).csrf
    sig = one.flash_sig("WMS sync requested")
    assert one.flash("WMS sync requested", sig) == "WMS sync requested"
    assert one.flash("Stock corrupted, call +1 555", sig) is None
    assert Session("s2", "a", who).flash("WMS sync requested", sig) is None
    assert one.flash("WMS sync requested", None) is None


def test_cursors_read_back_and_refuse_anything_else() -> None:
    assert _after_id(None) == 0
    assert _after_id("42") == 42
    assert _after_pair(_pair(NOW, 7)) == (NOW, 7)
    for bad in ("x", "-1", "9" * 20):
        with pytest.raises(InvalidRequest):
            _after_id(bad)
    for bad in ("x", "2026-12-02~", "2026-12-02T00:00:00~1", f"{NOW.isoformat()}~a"):
        with pytest.raises(InvalidRequest):
            _after_pair(bad)


def sync_doc(**extra: object) -> dict[str, object]:
    return {
        "sync_request_id": 3,
        "connector": "wms-main",
        "kind": "full",
        "sku": None,
        "status": "IN_PROGRESS",
        "error": None,
        "rows_seen": 250,
        "adjustments": 1,
        "requested_by": "ops",
        **extra,
    }


def test_the_sync_table_shows_a_percentage_when_the_sync_has_one() -> None:
    from stockkeeper.api.ui.pages import _ENV

    table = _ENV.get_template("syncs.html")
    with_total = table.render(syncs=[sync_doc(total=1000, percent=25.0, eta_seconds=30.0)])
    assert '<progress value="25.0" max="100">' in with_total
    assert "ETA 30 s" in with_total
    assert "250 / 1000" in with_total
    without = table.render(syncs=[sync_doc()])
    assert "<progress>working</progress>" in without  # no total: the status only
