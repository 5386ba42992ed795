"""The id rule (domain/ids.py): its fast path (str.isprintable) refuses exactly what the
per-character rule refuses, for every code point."""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest

from stockkeeper.domain.ids import REFUSED_CATEGORIES, printable, printable_part


def _refused(ch: str) -> bool:
    try:
        printable_part(f"A{ch}B")
    except ValueError:
        return True
    return False


def test_every_code_point_is_judged_by_its_category() -> None:
    wrong = [
        f"U+{cp:04X}"
        for cp in range(sys.maxunicode + 1)
        if _refused(chr(cp)) != (unicodedata.category(chr(cp)) in REFUSED_CATEGORIES)
    ]
    assert wrong == []


@pytest.mark.parametrize(
    "value",
    [
        "SKU\u00a01",  # no-break space (Zs): str.isprintable says no, the rule says yes
        "lot\u3000A",  # ideographic space (Zs)
        "x\ue000",  # private use (Co)
        "\U000e0100",  # variation selector (Mn)
        "caf\u00e9",
        "A B",
    ],
)
def test_values_the_fast_path_doubts_but_the_rule_allows(value: str) -> None:
    assert printable(value) == value


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("A\u200bB", "U+200B"),
        ("A\u2028B", "U+2028"),
        ("A\x00B", "U+0000"),
        ("A\ufeffB", "U+FEFF"),
        ("A\ud800B", "U+D800"),
    ],
)
def test_refusals_name_the_character(value: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        printable(value)
