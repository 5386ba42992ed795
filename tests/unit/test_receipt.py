"""A receipt built in code is checked like one that came over HTTP."""

from __future__ import annotations

import pytest

from stockkeeper.domain.errors import InvalidRequest
from stockkeeper.services.stock import Receipt


@pytest.mark.parametrize("quantity", [0, -3])
def test_a_receipt_of_no_units_is_a_clear_error(quantity: int) -> None:
    with pytest.raises(InvalidRequest, match="must be positive"):
        Receipt("TEA", quantity, "r-1")


def test_a_receipt_of_units_is_made() -> None:
    assert Receipt("TEA", 1, "r-1").quantity == 1
