"""``stockkeeper audit``: check the stock invariant and say plainly what is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field

from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass
class AuditReport:
    batches: int = 0
    ledger_entries: int = 0
    reservations: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def render(self) -> str:
        head = (
            f"audited {self.batches} batches, {self.ledger_entries} ledger entries, "
            f"{self.reservations} reservations"
        )
        if self.clean:
            return head + ": clean"
        return "\n".join([head + f": {len(self.problems)} problem(s)", *self.problems])


FIELDS = ("on_hand", "unavailable", "reserved", "committed")


async def audit(conn: Conn) -> AuditReport:
    """Run every check in one consistent snapshot."""
    report = AuditReport()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        counts = await conn.fetchrow(q("audit_counts"))
        assert counts is not None
        report.batches = counts["batches"]
        report.ledger_entries = counts["ledger_entries"]
        report.reservations = counts["reservations"]
        for r in await conn.fetch(q("audit_ledger_mismatch")):
            diffs = ", ".join(
                f"{f} {r[f]} vs ledger {r['l_' + f]}" for f in FIELDS if r[f] != r["l_" + f]
            )
            report.problems.append(f"batch {r['id']} ({r['sku']}): {diffs}")
        for r in await conn.fetch(q("audit_reservation_mismatch")):
            report.problems.append(
                f"batch {r['id']} ({r['sku']}): reserved {r['reserved']} vs open PENDING "
                f"lines {r['open_reserved']}, committed {r['committed']} vs open CONFIRMED "
                f"lines {r['open_committed']}"
            )
        for r in await conn.fetch(q("audit_negative")):
            report.problems.append(
                f"batch {r['id']} ({r['sku']}): negative figure "
                + ", ".join(f"{f}={r[f]}" for f in FIELDS)
            )
    return report
