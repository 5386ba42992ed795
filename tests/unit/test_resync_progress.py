"""The progress line of ``stockkeeper channels resync``: its counts add up to the SKUs
done, those a running propagator pushed included (D-482)."""

from __future__ import annotations

from stockkeeper.services.channel_resync import ResyncProgress


def progress(done: int, pushed: int) -> ResyncProgress:
    return ResyncProgress("shop", 253, done, pushed, 0, 0, 0, 0, 0.1)


def test_what_a_running_propagator_pushed_is_counted_in_the_line() -> None:
    p = progress(250, 50)
    assert p.by_others == 200
    assert p.text() == (
        "shop: 250/253 SKUs (98.8%) in 0.1s: 50 pushed, 0 already shown, 0 not listed, "
        "0 dead-lettered, 200 by a running propagator, 0 to retry"
    )


def test_alone_the_line_says_nothing_of_others() -> None:
    p = progress(253, 253)
    assert p.by_others == 0
    assert "propagator" not in p.text()
    assert "253 pushed, 0 already shown" in p.text()
