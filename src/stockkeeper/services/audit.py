"""``stockkeeper audit``: check the stock invariant and say plainly what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from stockkeeper.store import audit as checks
from stockkeeper.store.pool import Conn


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
            f"audited {_count(self.batches, 'batch', 'batches')}, "
            f"{_count(self.ledger_entries, 'ledger entry', 'ledger entries')}, "
            f"{_count(self.reservations, 'reservation', 'reservations')}"
        )
        if self.clean:
            return head + ": clean"
        found = _count(len(self.problems), "problem", "problems")
        return "\n".join([head + f": {found}", *self.problems])


FIELDS = ("on_hand", "unavailable", "reserved", "committed", "oversold")


# The checks audit() runs, in order: each is one scan of a table (or two) and can take
# minutes on a large database; ``on_step`` hears of each as it ends.
STEPS = ("counts", "ledger", "reservations", "negative figures")


async def audit(conn: Conn, on_step: Callable[[str], None] | None = None) -> AuditReport:
    """Run every check in one consistent snapshot; ``on_step(name)`` after each of
    :data:`STEPS` (a progress bar's tick)."""
    report = AuditReport()
    step = on_step or (lambda _name: None)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        counts = await checks.counts(conn)
        step(STEPS[0])
        report.batches = counts.batches
        report.ledger_entries = counts.ledger_entries
        report.reservations = counts.reservations
        for m in await checks.ledger_mismatches(conn):
            diffs = ", ".join(
                f"{f} {getattr(m.figures, f)} vs ledger {getattr(m.ledger, f)}"
                for f in FIELDS
                if getattr(m.figures, f) != getattr(m.ledger, f)
            )
            report.problems.append(f"batch {m.batch_id} ({m.sku}): {diffs}")
        step(STEPS[1])
        for r in await checks.reservation_mismatches(conn):
            report.problems.append(
                f"batch {r.batch_id} ({r.sku}): reserved {r.reserved} vs open PENDING "
                f"lines {r.open_reserved}, committed {r.committed} vs open CONFIRMED "
                f"lines {r.open_committed}"
            )
        step(STEPS[2])
        for n in await checks.negative_batches(conn):
            report.problems.append(
                f"batch {n.batch_id} ({n.sku}): negative figure "
                + ", ".join(f"{f}={getattr(n.figures, f)}" for f in FIELDS)
            )
        step(STEPS[3])
    return report


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"
