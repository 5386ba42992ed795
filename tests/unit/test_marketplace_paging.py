"""A marketplace feed's paging must move on (D-471): connectors/marketplace.py's
``check_advances``, the rule the delta poller applies to every page it reads."""

from __future__ import annotations

import pytest

from stockkeeper.connectors.marketplace import DeltaPage, TokenDidNotAdvance, check_advances


def page(next_token: str, has_more: bool, records: int = 1) -> DeltaPage:
    return DeltaPage(next_token=next_token, has_more=has_more, records=records)


@pytest.mark.parametrize(
    ("since", "answer", "read"),
    [
        pytest.param("t-1", page("t-1", True), set(), id="same-token-claiming-more"),
        pytest.param("t-1", page("t-1", False, records=3), set(), id="same-token-with-changes"),
        pytest.param("t-3", page("t-1", True), {"t-1", "t-2"}, id="back-to-a-token-read"),
        pytest.param("t-3", page("t-2", False), {"t-1", "t-2"}, id="back-without-more"),
    ],
)
def test_a_page_that_does_not_move_the_feed_on_is_refused(
    since: str, answer: DeltaPage, read: set[str]
) -> None:
    with pytest.raises(TokenDidNotAdvance, match="did not advance"):
        check_advances("mp", since, answer, read)


@pytest.mark.parametrize(
    ("since", "answer"),
    [
        pytest.param("t-1", page("t-1", False, records=0), id="a-quiet-feed"),
        pytest.param(None, page("t-1", True), id="the-first-page"),
        pytest.param("t-1", page("t-2", True), id="moving-on"),
    ],
)
def test_a_page_that_moves_on_or_a_quiet_feed_passes(since: str | None, answer: DeltaPage) -> None:
    check_advances("mp", since, answer, {"t-0"})
