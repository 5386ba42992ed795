"""The one rule for the characters of an id (SKU, order id, reference id, lot number,
transaction id) and of the short texts beside them, from whichever door it comes in:
the HTTP API, a webhook, an ERP view, a marketplace feed (docs/http.md, "Ids").

Any printable Unicode character, no surrounding whitespace. Refused: controls (C0, DEL,
C1: category Cc), format characters (zero-width space and joiners, bidi controls, the
byte order mark, soft hyphen: Cf), the line and paragraph separators U+2028/U+2029 (Zl,
Zp) and lone surrogates (Cs). Invisible characters would make "A\u200bB" a second SKU
beside "AB".

Nor may an id be ``.`` or ``..`` (D-470): put into a URL path they are the dot-segments
of RFC 3986, which every client and proxy removes (``GET /inventory/..`` asks for
``/``), so such an id could be written but never read by its path.
"""

from __future__ import annotations

import unicodedata

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# RFC 3986, 5.2.4: a path segment that is one of these is removed, never sent as itself.
DOT_SEGMENTS = frozenset({".", ".."})


def printable(value: str) -> str:
    """``value`` if it may be an id, else ValueError naming what is refused."""
    # Each check inline, the isprintable fast path included: this runs for every SKU of
    # every record (a call less per value is a third of its cost).
    if value in DOT_SEGMENTS:
        raise ValueError(
            f"must not be {value!r}: in a URL path it is a dot-segment, which clients remove"
        )
    if value != value.strip():
        raise ValueError("must not begin or end with whitespace")
    return value if value.isprintable() else _characters(value)


def printable_text(value: str) -> str:
    """``value`` if it may be a short text beside the ids (a line of an address, where
    a shopper's "." is a placeholder and never part of a path), else ValueError."""
    if value != value.strip():
        raise ValueError("must not begin or end with whitespace")
    return value if value.isprintable() else _characters(value)


def printable_part(value: str) -> str:
    """``value`` if it may be part of an id (a prefix to search by, which may end in a
    space), else ValueError naming the first character refused."""
    # str.isprintable is False for every character of the categories Other (Cc, Cf, Cs,
    # Co, Cn) and Separator (Zl, Zp, Zs but the ASCII space): a superset of the refused
    # ones, checked at C speed. Only a value it doubts is read character by character
    # (a sync of 500,000 SKUs spent 0.4 s of each process's CPU here).
    return value if value.isprintable() else _characters(value)


def _characters(value: str) -> str:
    """The slow path: ``value`` unless one of its characters is of a refused category."""
    for ch in value:
        if unicodedata.category(ch) in REFUSED_CATEGORIES:
            name = unicodedata.name(ch, "a control character")
            raise ValueError(f"must not contain U+{ord(ch):04X} ({name})")
    return value


# A row id (dead letter, sync request, a list's cursor): a PostgreSQL bigint, 1 to 2^63 - 1.
MAX_ROW_ID = 2**63 - 1
