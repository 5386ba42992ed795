"""Recording news of a level per channel, in the consumer's transaction: the newest
version wins, a channel's own change is not sent back to it, and changes that arrive
before the push is sent ride along with it (coalescing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from stockkeeper.domain.availability import AvailabilityRule
from stockkeeper.domain.propagation import SyncState, Verdict, judge
from stockkeeper.services.channel_rules import passes_sales_through
from stockkeeper.services.propagation.base import NOTIFY_CHANNEL, PropagationBase
from stockkeeper.store import channel_sync as repo
from stockkeeper.store.pool import Conn


@dataclass(frozen=True, slots=True)
class LevelChange:
    """News of one SKU's level for the channels, as a message brought it."""

    sku: str
    version: int
    available: int
    committed_at: datetime
    source: str | None
    # The consumer span's traceparent, stored with the push it makes due (D-241).
    traceparent: str | None = None


class Recorder(PropagationBase):
    """The ``channel.propagation`` consumer's effect: each level recorded per channel."""

    def _judge(
        self,
        ch: str,
        state: SyncState,
        version: int,
        figure: int,
        rule: AvailabilityRule,
        source: str | None,
    ) -> Verdict:
        """:func:`judge` for one channel. On a channel with several locations the total
        says nothing of its split (a transfer between our locations keeps it) and a
        sale there is not known to come out of the location that sold it: such a
        channel's change is pushed, and the push decides per location (D-282)."""
        located = ch in self.located
        verdict = judge(
            state,
            version,
            figure,
            # A sale moves a capped, shared or location-fed figure by something else
            # than the units sold: the channel's own change is pushed like any other.
            from_this_channel=not located
            and source in self.echo[ch]
            and passes_sales_through(rule),
            recheck_s=self.configs[ch].unlisted_recheck_s,
        )
        return Verdict.PUSH if located and verdict is Verdict.NOOP else verdict

    async def record(
        self,
        conn: Conn,
        sku: str,
        version: int,
        available: int,
        committed_at: datetime,
        source: str | None,
    ) -> dict[str, Verdict]:
        """Level ``version`` of ``sku`` for every channel, in the caller's transaction."""
        if not self.ids:
            return {}
        states = await repo.lock_states(conn, sku, self.ids)
        # After the lock: a rule change committed meanwhile is seen (see RulesService).
        figures = await self.rules.figures(conn, self.ids, sku, available)
        verdicts = {
            ch: self._judge(ch, states[ch], version, figures[ch][0], figures[ch][1], source)
            for ch in self.ids
        }
        live = {ch: v for ch, v in verdicts.items() if v is not Verdict.STALE}
        shown = {ch: (q, rule.describe()) for ch, (q, rule) in figures.items()}
        await repo.apply_level(conn, sku, version, shown, committed_at, live, NOTIFY_CHANNEL)
        for ch, v in verdicts.items():
            self.metrics.channel_changes.labels(channel=ch, verdict=v.value).inc()
        return verdicts

    async def record_many(
        self,
        conn: Conn,
        levels: Sequence[tuple[str, int, int]],
        committed_at: datetime,
        source: str | None,
    ) -> dict[str, dict[str, Verdict]]:
        """:meth:`record` for a bulk message, (sku, version, available) each, set-based:
        the states of every SKU and channel locked in one statement, judged here, and
        recorded in one more, whatever the number of SKUs (D-220)."""
        if not self.ids or not levels:
            return {}
        newest: dict[str, tuple[str, int, int]] = {}
        for lv in levels:
            seen = newest.get(lv[0])
            if seen is None or lv[1] > seen[1]:
                newest[lv[0]] = lv
        news = [
            LevelChange(sku, version, available, committed_at, source)
            for sku, version, available in newest.values()
        ]
        return await self._record_round(conn, news)

    async def record_batch(
        self, conn: Conn, changes: Sequence[LevelChange]
    ) -> list[dict[str, dict[str, Verdict]]]:
        """:meth:`record` for a batch of messages' changes, in delivery order, set-based
        (D-322): every SKU's rows locked in one statement in (sku, channel) order, the
        order of a bulk message and of the senders' acknowledgements, so batches of
        replicas and senders never wait on each other in a cycle. A SKU changed more
        than once in the batch is recorded in rounds (its first change in the first,
        its second in the second...), each round judged against what the previous one
        wrote: the same outcome as one message at a time. The verdicts per round."""
        if not self.ids or not changes:
            return []
        rounds: list[list[LevelChange]] = []
        seen: dict[str, int] = {}
        for ch in changes:
            n = seen.get(ch.sku, 0)
            seen[ch.sku] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(ch)
        return [await self._record_round(conn, r) for r in rounds]

    async def _record_round(
        self, conn: Conn, changes: Sequence[LevelChange], ids: Sequence[str] | None = None
    ) -> dict[str, dict[str, Verdict]]:
        """Changes of distinct SKUs: locked, judged and recorded in three statements, for
        the channels ``ids`` (all by default). A row another transaction created between
        the lock and the write is locked and judged again (D-420)."""
        ids = self.ids if ids is None else ids
        locked = await repo.lock_states_bulk(conn, [c.sku for c in changes], ids)
        states = locked.states
        # After the locks, as in record: a rule change committed meanwhile is seen.
        figures = await self.rules.figures_many(conn, ids, {c.sku: c.available for c in changes})
        out: dict[str, dict[str, Verdict]] = {}
        news: list[repo.LevelNews] = []
        counts: dict[tuple[str, Verdict], int] = {}
        for c in changes:
            mine = figures[c.sku]
            verdicts = {
                ch: self._judge(
                    ch, states[(c.sku, ch)], c.version, mine[ch][0], mine[ch][1], c.source
                )
                for ch in ids
            }
            out[c.sku] = verdicts
            live = {ch: v for ch, v in verdicts.items() if v is not Verdict.STALE}
            shown = {ch: (q, rule.describe()) for ch, (q, rule) in mine.items()}
            news.append(
                repo.LevelNews(c.sku, c.version, live, shown, c.committed_at, c.traceparent)
            )
        lost = await repo.apply_levels(
            conn, news, changes[0].committed_at, NOTIFY_CHANNEL, locked.missing
        )
        for c in changes:
            for ch, v in out[c.sku].items():
                if (c.sku, ch) not in lost:
                    counts[(ch, v)] = counts.get((ch, v), 0) + 1
        for (ch, v), n in counts.items():
            self.metrics.channel_changes.labels(channel=ch, verdict=v.value).inc(n)
        # Rare: rows another transaction inserted since the lock, judged again per
        # channel against what it wrote.
        for ch in sorted({ch for _, ch in lost}):
            again = [c for c in changes if (c.sku, ch) in lost]
            for sku, verdicts in (await self._record_round(conn, again, [ch])).items():
                out[sku] |= verdicts
        return out

    async def rearm(self, conn: Conn, channel: str, skus: Sequence[str]) -> int:
        """A replayed dead letter: its SKUs are due again on the channel."""
        n = await repo.rearm(conn, channel, skus)
        await repo.notify_senders(conn, NOTIFY_CHANNEL)
        return n
