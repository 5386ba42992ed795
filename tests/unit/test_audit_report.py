"""The audit's one-line report counts in words a shopkeeper reads as written."""

from __future__ import annotations

from stockkeeper.services.audit import AuditReport


def test_one_of_a_thing_is_singular_and_big_counts_are_grouped() -> None:
    report = AuditReport(batches=1, ledger_entries=1, reservations=0)
    assert report.render() == "audited 1 batch, 1 ledger entry, 0 reservations: clean"
    many = AuditReport(batches=12_000, ledger_entries=2, reservations=1)
    many.problems.append("batch 7 (X): on_hand 1 vs ledger 0")
    assert many.render() == (
        "audited 12,000 batches, 2 ledger entries, 1 reservation: 1 problem\n"
        "batch 7 (X): on_hand 1 vs ledger 0"
    )
