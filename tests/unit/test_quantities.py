"""A batch's figures: available never below zero, shortfall only for what was promised."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stockkeeper.domain.quantities import Delta, Figures, StockLevel, oversell


def test_units_held_back_beyond_on_hand_are_no_shortfall_when_nothing_is_promised() -> None:
    # A WMS count with quarantine (or safety stock) above what is on hand: nothing
    # sellable, but nobody was promised anything (D-475).
    f = Figures(on_hand=3, unavailable=5)
    assert (f.available, f.shortfall) == (0, 0)
    assert (Figures(unavailable=4).available, Figures(unavailable=4).shortfall) == (0, 0)


def test_what_was_promised_beyond_the_sellable_stock_is_the_shortfall() -> None:
    assert Figures(on_hand=3, unavailable=5, reserved=2).shortfall == 2
    assert Figures(on_hand=3, unavailable=5, reserved=1, committed=2, oversold=1).shortfall == 4
    # With sellable stock, the promises beyond it, as before.
    assert Figures(on_hand=10, unavailable=2, reserved=9).shortfall == 1
    assert Figures(on_hand=10, unavailable=2, reserved=8).shortfall == 0
    assert Figures(on_hand=5, reserved=8).shortfall == 3


def test_a_count_that_only_holds_back_more_units_is_no_oversell() -> None:
    before = Figures(on_hand=3)
    assert oversell(before, before.apply(Delta(unavailable=5))) == 0
    promised = Figures(on_hand=3, reserved=2)
    assert oversell(promised, promised.apply(Delta(unavailable=5))) == 2
    # Already short on everything promised: holding back more adds nothing.
    short = Figures(on_hand=3, unavailable=5, reserved=2)
    assert oversell(short, short.apply(Delta(unavailable=3))) == 0


def test_a_sku_sums_its_batches_shortfall() -> None:
    level = StockLevel.of([Figures(on_hand=3, unavailable=5), Figures(on_hand=1, reserved=2)])
    assert (level.available, level.shortfall) == (0, 1)


figures = st.builds(
    Figures,
    on_hand=st.integers(0, 50),
    unavailable=st.integers(0, 50),
    reserved=st.integers(0, 50),
    committed=st.integers(0, 50),
    oversold=st.integers(0, 50),
)


@given(figures)
def test_shortfall_is_zero_without_promises_and_never_more_than_them(f: Figures) -> None:
    promised = f.reserved + f.committed + f.oversold
    assert 0 <= f.shortfall <= promised
    assert f.available >= 0
    assert not (f.available and f.shortfall)
    if f.on_hand >= f.unavailable:
        # Sellable stock covers part of the promises: the two split the net.
        assert f.available - f.shortfall == f.net
