"""``stockkeeper status``'s tables (status_report.render), as printed to a file or a pipe."""

from __future__ import annotations

import io

from rich.console import Console

from stockkeeper.status_report import render

CHANNELS = {
    "amazon-sandbox": {
        "lag_ms": {"p50": 21086.893, "p99": 21139.006991},
        "pending": 931,
        "dead": 0,
        "unlisted": 0,
        "alerting": True,
    },
    "webhook-sandbox": {
        "lag_ms": {"p50": 312.855, "p99": 408.102},
        "pending": 0,
        "dead": 0,
        "unlisted": 0,
        "alerting": False,
    },
}


def test_channels_keep_their_whole_ids_and_lags_in_whole_ms_at_80_columns() -> None:
    """Piped, rich lays the table out in 80 columns: a channel id cut to "amazon-san…"
    names no channel, and a lag of 21139.006991 ms says nothing more than 21139."""
    out = io.StringIO()
    render({"channels": CHANNELS}, Console(file=out, width=80))
    text = out.getvalue()
    cells = [[c.strip() for c in line.split("│")] for line in text.splitlines()]
    rows = {row[0]: row for row in cells if "sandbox" in row[0]}
    assert set(rows) == set(CHANNELS), text
    assert rows["amazon-sandbox"][1:4] == ["21087", "21139", "931"], text
    assert rows["webhook-sandbox"][1:3] == ["313", "408"], text
