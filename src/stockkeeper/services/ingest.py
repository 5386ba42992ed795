"""Ingestion use cases: queue what a source sent, and apply it to our books.

Queueing writes an ``ingest.<connector>`` outbox event (many records per message) in
the caller's transaction, so a poller's cursor or a webhook's delivery id commits with
it: "durably queued" means committed here. Applying happens in the ingest worker's
transaction: absolute levels only when newer than what the connector last told us
(``source_record_version``), sales once per transaction id (``ingested_sale``), both as
ledger entries with their events; records that cannot be booked become dead letters
with the reason while the rest flows on.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from stockkeeper.config import IngestOptions
from stockkeeper.connectors.records import (
    LevelRecord,
    Refused,
    SaleRecord,
    level_json,
    levels_json,
    sale_json,
)
from stockkeeper.domain.allocation import BatchStock
from stockkeeper.domain.events import Event
from stockkeeper.domain.ingest import (
    Level,
    PricingRule,
    Sale,
    home_batch,
    level_moves,
    newest_per_key,
    sale_moves,
    sale_return_moves,
)
from stockkeeper.domain.quantities import Delta, oversell
from stockkeeper.domain.reservation import EntryType
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.shopify_cancels import cancels_of_nothing
from stockkeeper.services.unit import Clock, announce_levels, record_change, utcnow
from stockkeeper.store import connector_state, dead_letters, outbox, source_records, stock
from stockkeeper.store.connector_state import Overview
from stockkeeper.store.pool import Conn
from stockkeeper.store.stock import Movement

log = get_logger("stockkeeper.ingest")
# The largest price sku_price.price (numeric(14,4)) holds.
MAX_PRICE = Decimal("9999999999.9999")

INGEST_QUEUE = "inventory.ingest"
DEFAULT_LOCATION = "default"
# Records per ingest message: a page of 5,000 ERP rows travels as 10 messages.
RECORDS_PER_MESSAGE = 500
# How far ahead of our clock a level's source time may be, for a connector that is no
# longer configured (a dead letter replayed after its connector was removed).
MAX_AHEAD_S = 86_400


def ingest_event_type(connector: str) -> str:
    return f"ingest.{connector}"


@dataclass(slots=True)
class Applied:
    """What one ingest message did."""

    levels: int = 0
    stale: int = 0
    sales: int = 0
    duplicate_sales: int = 0
    refused: int = 0
    # Units sold beyond on_hand, booked as the batch's oversold quantity.
    unbooked_units: int = 0
    # Units by which this message's sales and levels left us short (the shortfall they
    # added): what stockkeeper_oversell_total counts.
    oversell: int = 0
    skus: set[str] = field(default_factory=set)


async def refuse(
    conn: Conn, connector: str, refused: Sequence[Refused], *, reason_prefix: str = ""
) -> None:
    """Dead-letter records that cannot be booked, each its own dead letter with its
    reason, all in one statement."""
    now = utcnow()
    await dead_letters.record_many(
        conn,
        [
            dead_letters.Letter(
                queue=INGEST_QUEUE,
                routing_key=ingest_event_type(connector),
                headers={"connector": connector},
                error=f"{reason_prefix}{r.error}",
                attempts=1,
                **_letter(connector, r, now),
            )
            for r in refused
        ],
    )


def _letter(connector: str, r: Refused, now: datetime) -> dict[str, Any]:
    """The message id and body of a refused record's dead letter. One of our own level or
    sale records is kept as an ingest message of that record alone, so a replay ingests
    it again: applied once its SKU exists (``auto_create_skus`` off), else refused again
    with its reason (D-386). A record still in its source's format is kept as it came."""
    if r.kind is None:
        record = {"connector": connector, "kind": "record", "record": r.raw}
        return {"message_id": None, "body": orjson.dumps(record, default=str)}
    # What orjson writes of it, as an ingest message's records are: JSON values only.
    raw = orjson.loads(orjson.dumps(r.raw, default=str))
    payload = {"connector": connector, "levels": [], "sales": []}
    payload["levels" if r.kind == "level" else "sales"] = [raw]
    env_id = uuid.uuid4()
    body = Envelope.dump(env_id, ingest_event_type(connector), payload, occurred_at=now)
    return {"message_id": str(env_id), "body": body}


async def queue_records(
    conn: Conn,
    connector: str,
    levels: Sequence[LevelRecord],
    sales: Sequence[SaleRecord],
    refused: Sequence[Refused] = (),
    *,
    per_message: int = RECORDS_PER_MESSAGE,
) -> int:
    """In the caller's transaction: the records as ingest messages (through the outbox)
    and the refusals as dead letters. Returns how many messages were queued."""
    events: list[Event] = []
    kind = ingest_event_type(connector)
    for i in range(0, len(levels), per_message):
        chunk = levels_json(levels[i : i + per_message])
        events.append(Event(kind, {"connector": connector, "levels": chunk, "sales": []}))
    for i in range(0, len(sales), per_message):
        chunk = [sale_json(r) for r in sales[i : i + per_message]]
        events.append(Event(kind, {"connector": connector, "levels": [], "sales": chunk}))
    await outbox.add(conn, events)
    await refuse(conn, connector, refused)
    return len(events)


async def connector_status(conn: Conn, connectors: Sequence[str]) -> list[Overview]:
    """Per polled connector: its cursor, its circuit breaker and its last error."""
    return await connector_state.overview(conn, connectors)


class IngestService:
    """Applies ingest messages to the books."""

    def __init__(
        self,
        metrics: Metrics,
        connectors: Sequence[IngestOptions],
        clock: Clock = utcnow,
        *,
        levels_per_message: int = 0,
    ) -> None:
        self.metrics = metrics
        self.connectors = {c.id: c for c in connectors}
        self.clock = clock
        # A page's new levels as inventory.levels_changed messages (D-220).
        self.levels_per_message = levels_per_message

    async def apply(
        self,
        conn: Conn,
        connector: str,
        levels: Sequence[LevelRecord],
        sales: Sequence[SaleRecord],
        *,
        reference: str,
    ) -> Applied:
        """In the consumer's transaction; ``reference`` (the message id) goes on the
        ledger entries."""
        cfg = self.connectors.get(connector)
        auto_create = cfg.auto_create_skus if cfg is not None else False
        done = Applied()
        levels, ahead = self._split_ahead(cfg, levels)
        if ahead:
            await self._refuse_ahead(conn, connector, cfg, ahead)
            done.refused += len(ahead)
        wanted = newest_per_key([r.level(connector) for r in levels])
        done.stale += len(levels) - len(wanted)
        sold = [r.sale() for r in sales]
        skus = sorted({lv.sku for lv in wanted} | {s.sku for s in sold})
        if not skus:
            self._count(connector, done)
            return done
        known = await stock.known_skus(conn, skus)
        unknown = set(skus) - known
        if unknown and not auto_create:
            await self._refuse_unknown(conn, connector, levels, sales, unknown)
            done.refused += sum(1 for lv in wanted if lv.sku in unknown)
            done.refused += sum(1 for s in sold if s.sku in unknown)
            wanted = [lv for lv in wanted if lv.sku not in unknown]
            sold = [s for s in sold if s.sku not in unknown]
        elif unknown:
            await stock.ensure_skus(conn, unknown)
        winners = await self._newer_levels(conn, connector, wanted)
        done.stale += len(wanted) - len(winners)
        fresh = await self._new_sales(conn, sold)
        done.duplicate_sales += len(sold) - len(fresh)
        if not winners and not fresh:
            self._count(connector, done)
            return done
        touched = sorted({lv.sku for lv in winners} | {s.sku for s in fresh})
        now = self.clock()
        source = connector
        reason = f"level from {connector}"
        # The page's levels in SQL (D-330): new places are created holding their level,
        # places whose only batch is the lotless one move in one statement; places with
        # lots, and sales, are computed here.
        created = await self._ensure_lotless(
            conn, winners, fresh, source=source, reference=reference, reason=reason
        )
        await source_records.lock_batches(conn, touched)
        plain = await source_records.apply_plain_levels(
            conn, winners, source=source, reference_id=reference, reason=reason
        )
        with_lots = [lv for lv in winners if lv.key in plain.with_lots]
        # A place with lots and no lotless batch yet gets one (its id is above every id
        # locked so far, so the lock order holds).
        await stock.add_lotless_batches(conn, {lv.key for lv in with_lots})
        rest = sorted({lv.sku for lv in with_lots} | {s.sku for s in fresh})
        batches = await self._lock_with_home(conn, rest, fresh) if rest else {}
        before = {bid: b.figures for bid, b in batches.items()}
        adjust = self._level_moves(batches, with_lots)
        sales_moves, oversold = self._sale_moves(batches, fresh, now)
        if adjust:
            await stock.apply_movements(conn, adjust, already_locked=True)
            await stock.insert_ledger(
                conn,
                adjust,
                entry_type=EntryType.ADJUSTMENT,
                source=source,
                reference_id=reference,
                reason=reason,
            )
        adjusted = created | plain.moved | {m.sku for m in adjust if not m.delta.is_zero}
        if adjusted:
            await announce_levels(
                conn,
                adjusted,
                entry_type=EntryType.ADJUSTMENT,
                source=source,
                now=now,
                levels_per_message=self.levels_per_message,
            )
        if sales_moves:
            await stock.apply_movements(conn, sales_moves, already_locked=True)
            await record_change(
                conn,
                sales_moves,
                entry_type=EntryType.SALE,
                source=source,
                reference_id=reference,
                now=now,
                reason=f"sold on {connector}",
                levels_per_message=self.levels_per_message,
            )
        await source_records.set_unbooked_many(
            conn, [(sale.source, sale.transaction_id, units) for sale, units in oversold.items()]
        )
        done.unbooked_units += sum(oversold.values())
        done.oversell = plain.oversell + sum(
            oversell(before[bid], b.figures) for bid, b in batches.items()
        )
        await self._prices(conn, connector, cfg, winners)
        done.levels = len(winners)
        done.sales = len(fresh)
        done.skus = set(touched)
        self._count(connector, done)
        return done

    def _max_ahead_s(self, cfg: IngestOptions | None) -> int:
        return cfg.max_ahead_s if cfg is not None else MAX_AHEAD_S

    def _split_ahead(
        self, cfg: IngestOptions | None, levels: Sequence[LevelRecord]
    ) -> tuple[list[LevelRecord], list[LevelRecord]]:
        """The levels to apply, and those stamped too far ahead of our clock (D-443): the
        newer-wins guard would keep a level from 2099 as its place's truth, dropping
        every true level after it as older, until 2099."""
        limit = self.clock() + timedelta(seconds=self._max_ahead_s(cfg))
        kept = [r for r in levels if r.source_updated_at <= limit]
        if len(kept) == len(levels):
            return list(levels), []
        return kept, [r for r in levels if r.source_updated_at > limit]

    async def _refuse_ahead(
        self, conn: Conn, connector: str, cfg: IngestOptions | None, ahead: list[LevelRecord]
    ) -> None:
        now = self.clock()
        bad = [
            Refused(
                level_json(r),
                f"source_updated_at {r.source_updated_at.isoformat()} is "
                f"{(r.source_updated_at - now).total_seconds():.0f}s ahead of our clock "
                f"(max_ahead_s {self._max_ahead_s(cfg)})",
                "level",
            )
            for r in ahead
        ]
        await refuse(conn, connector, bad)
        self.metrics.dead_letters.labels(queue=INGEST_QUEUE).inc(len(bad))

    async def _refuse_unknown(
        self,
        conn: Conn,
        connector: str,
        levels: Sequence[LevelRecord],
        sales: Sequence[SaleRecord],
        unknown: set[str],
    ) -> None:
        bad = [
            Refused(level_json(r), f"unknown sku {r.sku}", "level")
            for r in levels
            if r.sku in unknown
        ]
        bad += [
            Refused(sale_json(r), f"unknown sku {r.sku}", "sale") for r in sales if r.sku in unknown
        ]
        await refuse(conn, connector, bad, reason_prefix="auto_create_skus off: ")
        self.metrics.dead_letters.labels(queue=INGEST_QUEUE).inc(len(bad))

    async def _newer_levels(self, conn: Conn, connector: str, wanted: list[Level]) -> list[Level]:
        won = await source_records.record_newer_levels(conn, connector, wanted)
        return [lv for lv in wanted if lv.key in won]

    async def _new_sales(self, conn: Conn, sold: list[Sale]) -> list[Sale]:
        if not sold:
            return []
        # A transaction id repeated inside one message counts once too.
        unique = list({(s.source, s.transaction_id): s for s in sold}.values())
        void = await cancels_of_nothing(conn, unique, self.connectors)  # D-489
        new = await source_records.claim_sales(conn, unique)
        return [s for s in unique if (s.source, s.transaction_id) in new - void]

    async def _ensure_lotless(
        self,
        conn: Conn,
        winners: list[Level],
        fresh: list[Sale],
        *,
        source: str,
        reference: str,
        reason: str,
    ) -> set[str]:
        """Every place a level or a return goes to exists: a level's new place is created
        holding the level (with its ledger entry), a return's home is an empty lotless
        batch at the default location. The SKUs whose new batch holds units."""
        returns = {(s.sku, DEFAULT_LOCATION) for s in fresh if s.delta > 0}
        codes = {lv.location for lv in winners} | {loc for _, loc in returns}
        if not codes:
            return set()
        await stock.ensure_locations(conn, codes)
        created = await source_records.create_level_batches(
            conn, winners, source=source, reference_id=reference, reason=reason
        )
        await stock.add_lotless_batches(conn, returns)
        return created

    async def _lock_with_home(
        self, conn: Conn, skus: list[str], fresh: list[Sale]
    ) -> dict[int, BatchStock]:
        """The SKUs' batches, locked; a SKU sold that has no batch at all (one just made
        by ``auto_create_skus``) first gets its lotless batch, so the sale is booked."""
        batches = await stock.lock_batches_of(conn, skus)
        bare = {s.sku for s in fresh} - {b.sku for b in batches.values()}
        if bare:
            # New rows: their ids are above every id locked so far (lock order holds).
            await stock.add_lotless_batches(conn, {(sku, DEFAULT_LOCATION) for sku in bare})
            batches.update(await stock.lock_batches_of(conn, bare))
        return batches

    def _level_moves(self, batches: dict[int, BatchStock], winners: list[Level]) -> list[Movement]:
        # No inventory.adjusted event per level: a sync of 500,000 SKUs would publish
        # half a million events nobody consumes. The level_changed event that
        # record_change writes per SKU carries the new figures, the cause and the source.
        by_place: dict[tuple[str, str], list[BatchStock]] = {}
        for b in batches.values():
            by_place.setdefault((b.sku, b.location), []).append(b)
        moves: list[Movement] = []
        for lv in winners:
            here = sorted(by_place.get(lv.key, []), key=lambda b: (b.lot_number is not None, b.id))
            for batch_id, delta in level_moves(here, lv.on_hand):
                moves.append(Movement(batch_id, lv.sku, delta))
                _move(batches, batch_id, delta)
        return moves

    def _sale_moves(
        self, batches: dict[int, BatchStock], fresh: list[Sale], now: Any
    ) -> tuple[list[Movement], dict[Sale, int]]:
        """Every sale booked whole: what on_hand cannot cover is oversold (D-120)."""
        moves: list[Movement] = []
        oversold: dict[Sale, int] = {}
        for sale in fresh:
            mine = [b for b in batches.values() if b.sku == sale.sku]
            if sale.delta > 0:
                pairs = sale_return_moves(mine, sale.delta)
            else:
                pairs, left = sale_moves(mine, -sale.delta, now)
                if left:
                    pairs = _merged([*pairs, (home_batch(mine).id, Delta(oversold=left))])
                    oversold[sale] = left
            for batch_id, delta in pairs:
                moves.append(Movement(batch_id, sale.sku, delta, reference_id=sale.transaction_id))
                _move(batches, batch_id, delta)
        return moves, oversold

    async def _prices(
        self, conn: Conn, connector: str, cfg: IngestOptions | None, winners: list[Level]
    ) -> None:
        priced = [lv for lv in winners if lv.price is not None]
        if cfg is None or cfg.pricing is None or not priced:
            return
        rule = PricingRule(cfg.pricing.markup_percent, cfg.pricing.round_to)
        rows = []
        for lv in priced:
            source = lv.price or Decimal(0)
            ours = rule.price(source)
            if ours > MAX_PRICE:
                # Past what sku_price holds after the markup: this price is left out and
                # said so, the level and the rest of the message go on (D-484).
                log.warning(
                    "ingest.price_out_of_range",
                    connector=connector,
                    sku=lv.sku,
                    source_price=str(source),
                    price=str(ours),
                )
                continue
            rows.append((lv.sku, source, ours, lv.updated_at))
        if rows:
            await source_records.save_prices(conn, connector, rows)

    def _count(self, connector: str, d: Applied) -> None:
        m = self.metrics.ingest_records
        for outcome, n in (
            ("level_applied", d.levels),
            ("level_stale", d.stale),
            ("sale_applied", d.sales),
            ("sale_duplicate", d.duplicate_sales),
            ("refused", d.refused),
        ):
            if n:
                m.labels(connector=connector, outcome=outcome).inc(n)
        if d.unbooked_units:
            self.metrics.ingest_unbooked_units.labels(connector=connector).inc(d.unbooked_units)
        if d.oversell:
            self.metrics.oversell.labels(source=connector).inc(d.oversell)


def _merged(pairs: list[tuple[int, Delta]]) -> list[tuple[int, Delta]]:
    """One move per batch (one ledger entry per batch and sale), in batch order."""
    out: dict[int, Delta] = {}
    for batch_id, delta in pairs:
        out[batch_id] = out.get(batch_id, Delta()) + delta
    return sorted(out.items())


def _move(batches: dict[int, BatchStock], batch_id: int, delta: Delta) -> None:
    b = batches[batch_id]
    batches[batch_id] = dataclasses.replace(b, figures=b.figures.apply(delta))
