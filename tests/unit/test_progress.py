"""The progress helper: plain lines every N items off a terminal, a bar on one."""

from __future__ import annotations

import io

from stockkeeper.observability.progress import (
    LineProgress,
    default_every,
    eta_s,
    format_duration,
    progress,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_line_every_n_items_with_count_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(1000, "resync shop", out, every=250, clock=clock)
    for _ in range(10):
        clock.now += 1.0
        bar.advance(50)  # 50 items a second
    bar.finish()
    assert out.getvalue().splitlines() == [
        "resync shop: 250/1000 (25%) 50.0/s ETA 15s",
        "resync shop: 500/1000 (50%) 50.0/s ETA 10s",
    ]


def test_the_last_line_says_it_is_done_and_an_unknown_total_has_no_eta() -> None:
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(300, "audit", out, every=200, clock=clock)
    clock.now += 2
    bar.advance(300)
    bar.finish()
    bar.finish()  # nothing new: no second line
    assert out.getvalue().splitlines() == ["audit: 300/300 (100%) 150.0/s done in 2s"]

    out = io.StringIO()
    bar = LineProgress(None, "walk", out, every=10, clock=clock)
    clock.now += 1
    bar.advance(10)
    assert out.getvalue() == "walk: 10 10.0/s\n"


def test_progress_picks_lines_or_a_bar_and_always_ends_with_where_it_got() -> None:
    out = io.StringIO()  # not a terminal
    try:
        with progress(40, "migrate", stream=out) as bar:
            for _ in range(3):
                bar.advance()
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("migrate: 3/40 (8%)")
    assert len(lines) == 2  # every 2 items (40 / 20), then the last line

    tty = io.StringIO()
    with progress(5, "reconcile", stream=tty, tty=True) as bar:
        bar.set_total(4)
        bar.advance(4)
    assert "reconcile" in tty.getvalue()
    assert "4/4" in tty.getvalue()


def test_helpers() -> None:
    assert eta_s(0, 10, 5.0) is None
    assert eta_s(5, None, 5.0) is None
    assert eta_s(5, 10, 5.0) == 5.0
    assert format_duration(59.6) == "1m00s"
    assert format_duration(3725) == "1h02m"
    assert default_every(None) == 100
    assert default_every(2000) == 100
    assert default_every(7) == 1
