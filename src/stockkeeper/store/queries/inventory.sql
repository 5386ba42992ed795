-- Stock: SKUs, locations, batches, the ledger and per-SKU levels.

-- name: ensure_sku
INSERT INTO sku (sku) VALUES ($1) ON CONFLICT (sku) DO NOTHING;

-- name: sku_exists
SELECT sku FROM sku WHERE sku = ANY($1::text[]);

-- name: location_exists
SELECT code FROM location WHERE code = ANY($1::text[]);

-- name: ensure_location
INSERT INTO location (code) VALUES ($1) ON CONFLICT (code) DO NOTHING;

-- name: upsert_batch
-- The no-op DO UPDATE makes the statement return the existing row and lock it, so
-- concurrent receipts of a new lot end on one batch.
INSERT INTO sku_batch (sku, location, lot_number, expires_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (sku, location, COALESCE(lot_number, ''))
DO UPDATE SET updated_at = sku_batch.updated_at
RETURNING id, expires_at;

-- name: read_batches
-- Plain read for the conditional and optimistic strategies: no lock is taken here.
SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
       committed, oversold, version
FROM sku_batch
WHERE sku = ANY($1::text[])
ORDER BY id;

-- name: lock_batches
-- row_lock strategy. LockRows sits above the Sort, so rows are locked in id order:
-- every transaction takes batch locks in the same order and cannot deadlock.
SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
       committed, oversold, version
FROM sku_batch
WHERE sku = ANY($1::text[])
ORDER BY id
FOR UPDATE;

-- name: lock_batch_by_id
SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
       committed, oversold, version
FROM sku_batch
WHERE id = $1
FOR UPDATE;

-- name: reserve_guarded
-- conditional strategy: one guarded UPDATE. Under READ COMMITTED a concurrent writer
-- makes us wait for its commit, then the WHERE is re-checked on the new row, so the
-- guard holds however many requests race for the last unit.
UPDATE sku_batch
SET reserved = reserved + $2, version = version + 1, updated_at = now()
WHERE id = $1 AND on_hand - unavailable - reserved - committed - oversold >= $2
RETURNING id;

-- name: reserve_cas
-- optimistic strategy: compare-and-swap on the version read before allocating.
UPDATE sku_batch
SET reserved = reserved + $2, version = version + 1, updated_at = now()
WHERE id = $1 AND version = $3 AND on_hand - unavailable - reserved - committed - oversold >= $2
RETURNING id;

-- name: apply_delta
-- Unguarded movement; the CHECK constraints refuse any negative figure.
UPDATE sku_batch
SET on_hand = on_hand + $2,
    unavailable = unavailable + $3,
    reserved = reserved + $4,
    committed = committed + $5,
    oversold = oversold + $6,
    version = version + 1,
    updated_at = now()
WHERE id = $1
RETURNING id;

-- name: apply_deltas_locked
-- Many movements in one statement, for rows this transaction has already locked (in id
-- order): the join may visit them in any order without risking a deadlock.
UPDATE sku_batch b
SET on_hand = b.on_hand + d.on_hand,
    unavailable = b.unavailable + d.unavailable,
    reserved = b.reserved + d.reserved,
    committed = b.committed + d.committed,
    oversold = b.oversold + d.oversold,
    version = b.version + 1,
    updated_at = now()
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
            $6::bigint[])
     AS d (id, on_hand, unavailable, reserved, committed, oversold)
WHERE b.id = d.id;

-- name: insert_ledger
INSERT INTO inventory_ledger (batch_id, sku, entry_type, d_on_hand, d_unavailable,
                              d_reserved, d_committed, source, reference_id, reason,
                              d_oversold)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[],
                     $11::bigint[]);

-- name: bump_skus
-- Locks the SKU rows in name order (LockRows above Sort) and bumps their version.
-- Every writer takes its batch locks first and its SKU locks second, each in a fixed
-- order, so no two writers can wait on each other in a cycle. NO KEY UPDATE, not
-- UPDATE: inserting a batch takes KEY SHARE on its SKU (the foreign key), and two
-- receipts of new lots of one SKU must not deadlock on that.
WITH locked AS (
    SELECT sku FROM sku WHERE sku = ANY($1::text[]) ORDER BY sku FOR NO KEY UPDATE
)
UPDATE sku s
SET version = s.version + 1, updated_at = now()
FROM locked
WHERE s.sku = locked.sku
RETURNING s.sku, s.version;

-- name: lock_skus
SELECT sku FROM sku WHERE sku = ANY($1::text[]) ORDER BY sku FOR NO KEY UPDATE;

-- name: sku_levels
-- Run after bump_skus in the same transaction: holding the SKU locks, this statement's
-- snapshot holds every earlier version's change and none of a later one.
SELECT s.sku, s.version, s.updated_at,
       COALESCE(sum(b.on_hand), 0)::bigint AS on_hand,
       COALESCE(sum(b.unavailable), 0)::bigint AS unavailable,
       COALESCE(sum(b.reserved), 0)::bigint AS reserved,
       COALESCE(sum(b.committed), 0)::bigint AS committed,
       COALESCE(sum(b.oversold), 0)::bigint AS oversold,
       -- An expired lot is never sold, so it is never shown as available either.
       COALESCE(sum(GREATEST(b.on_hand - b.unavailable - b.reserved - b.committed - b.oversold,
                             0))
                FILTER (WHERE b.expires_at IS NULL OR b.expires_at > $2), 0)::bigint
           AS available,
       -- What was promised beyond the sellable stock: domain/quantities.Figures.shortfall
       -- (D-475; units held back beyond on_hand promise nothing).
       COALESCE(sum(GREATEST(b.reserved + b.committed + b.oversold
                             - GREATEST(b.on_hand - b.unavailable, 0), 0)), 0)::bigint
           AS shortfall
FROM sku s
LEFT JOIN sku_batch b ON b.sku = s.sku
WHERE s.sku = ANY($1::text[])
GROUP BY s.sku;

-- name: sku_batches
SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
       committed, oversold, version, updated_at
FROM sku_batch
WHERE sku = ANY($1::text[])
ORDER BY sku, expires_at NULLS LAST, id;

-- name: ledger_page
SELECT id, batch_id, sku, entry_type, d_on_hand, d_unavailable, d_reserved, d_committed,
       d_oversold, source, reference_id, reason, created_at
FROM inventory_ledger
WHERE sku = $1 AND id > $2
ORDER BY id
LIMIT $3;

-- name: claim_expired_lots
-- Lots past their expiry that still show sellable units: the expiry worker moves those
-- units to unavailable through the ledger, so channels hear of it.
SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
       committed, oversold, version
FROM sku_batch
WHERE expires_at <= $1 AND on_hand - unavailable - reserved - committed - oversold > 0
ORDER BY id
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: ledger_and_bump
-- insert_ledger and bump_skus in one round trip (D-300). The ledger CTE takes no lock
-- of its own (its foreign keys take KEY SHARE, which our batch and SKU locks allow);
-- the SKU rows are locked in name order, after the batch locks the caller's earlier
-- statements took, as bump_skus does.
WITH ledger AS (
    INSERT INTO inventory_ledger (batch_id, sku, entry_type, d_on_hand, d_unavailable,
                                  d_reserved, d_committed, source, reference_id, reason,
                                  d_oversold)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[],
                         $11::bigint[])
), locked AS (
    SELECT sku FROM sku WHERE sku = ANY($12::text[]) ORDER BY sku FOR NO KEY UPDATE
)
UPDATE sku s
SET version = s.version + 1, updated_at = now()
FROM locked
WHERE s.sku = locked.sku
RETURNING s.sku, s.version;

-- name: lines_ledger_and_bump
-- A new reservation's lines with its ledger rows and SKU bump (ledger_and_bump), one
-- round trip (D-300).
WITH lines AS (
    INSERT INTO reservation_line (reservation_id, line_no, sku, batch_id, quantity)
    SELECT $13, * FROM unnest($14::int[], $15::text[], $16::bigint[], $17::bigint[])
), ledger AS (
    INSERT INTO inventory_ledger (batch_id, sku, entry_type, d_on_hand, d_unavailable,
                                  d_reserved, d_committed, source, reference_id, reason,
                                  d_oversold)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[],
                         $11::bigint[])
), locked AS (
    SELECT sku FROM sku WHERE sku = ANY($12::text[]) ORDER BY sku FOR NO KEY UPDATE
)
UPDATE sku s
SET version = s.version + 1, updated_at = now()
FROM locked
WHERE s.sku = locked.sku
RETURNING s.sku, s.version;

-- name: receive_start
-- A receipt's first round trip (D-300): claim_reference, ensure_sku, ensure_location,
-- upsert_batch and the batch's on_hand delta (apply_delta's). A repeat (the claim
-- conflicted) writes nothing else. The batch's foreign keys are checked at the end of
-- the statement, when the SKU and location rows of the sibling inserts are there.
WITH claim AS (
    INSERT INTO applied_reference (kind, reference_id, request_hash, response)
    VALUES ('receipt', $1, $2, 'null'::json)
    ON CONFLICT (kind, reference_id) DO NOTHING
    RETURNING reference_id
), new_sku AS (
    INSERT INTO sku (sku) SELECT $3 WHERE EXISTS (SELECT 1 FROM claim)
    ON CONFLICT (sku) DO NOTHING
), new_location AS (
    INSERT INTO location (code) SELECT $4 WHERE EXISTS (SELECT 1 FROM claim)
    ON CONFLICT (code) DO NOTHING
), batch AS (
    INSERT INTO sku_batch (sku, location, lot_number, expires_at, on_hand, version)
    SELECT $3, $4, $5, $6, $7, CASE WHEN $7::bigint <> 0 THEN 1 ELSE 0 END
    WHERE EXISTS (SELECT 1 FROM claim)
    ON CONFLICT (sku, location, COALESCE(lot_number, ''))
    DO UPDATE SET on_hand = sku_batch.on_hand + excluded.on_hand,
                  version = sku_batch.version + excluded.version,
                  updated_at = CASE WHEN excluded.on_hand <> 0 THEN now()
                                    ELSE sku_batch.updated_at END
    RETURNING id, expires_at
)
SELECT EXISTS (SELECT 1 FROM claim) AS claimed, batch.id, batch.expires_at,
       -- Units owed to buyers on the SKU's other batches (D-485): read from the
       -- statement's snapshot, so that carry_oversold runs only when there are some.
       (SELECT COALESCE(sum(o.oversold), 0) FROM sku_batch o
        WHERE o.sku = $3 AND o.oversold > 0 AND o.id <> batch.id)::bigint AS owed
FROM (VALUES (1)) AS one (x)
LEFT JOIN batch ON true;

-- name: carry_oversold
-- D-485: what a receipt brings in serves the units the SKU owes first. The oversold
-- units on the SKU's other batches (in id order) move onto the batch it filled, up to
-- the units it received, so available rises only beyond them (D-120) whichever batch
-- the receipt went to. Returns each batch moved from and how many units.
WITH owed AS (
    SELECT id, oversold FROM sku_batch
    WHERE sku = $1 AND id <> $2 AND oversold > 0
    ORDER BY id
    FOR UPDATE
), taken AS (
    SELECT id,
           LEAST(oversold, GREATEST($3 - (sum(oversold) OVER (ORDER BY id) - oversold), 0))
               AS units
    FROM owed
), moved AS (
    UPDATE sku_batch b
    SET oversold = b.oversold - t.units, version = b.version + 1, updated_at = now()
    FROM taken t
    WHERE b.id = t.id AND t.units > 0
    RETURNING b.id, t.units
), landed AS (
    UPDATE sku_batch b
    SET oversold = b.oversold + (SELECT sum(units) FROM moved)
    WHERE b.id = $2 AND EXISTS (SELECT 1 FROM moved)
)
SELECT id, units::bigint AS units FROM moved ORDER BY id;

-- name: adjust_start_sku
-- An adjustment's claim_reference and the lock of every batch of the SKU in id order
-- (lock_batches), in one round trip (D-300); a repeat (the claim conflicted) locks
-- nothing. One row of NULLs when the SKU has no batch.
WITH claim AS (
    INSERT INTO applied_reference (kind, reference_id, request_hash, response)
    VALUES ('adjustment', $1, $2, 'null'::json)
    ON CONFLICT (kind, reference_id) DO NOTHING
    RETURNING reference_id
), batches AS (
    SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
           committed, oversold, version
    FROM sku_batch
    WHERE sku = $3 AND EXISTS (SELECT 1 FROM claim)
    ORDER BY id
    FOR UPDATE
)
SELECT EXISTS (SELECT 1 FROM claim) AS claimed, b.*
FROM (VALUES (1)) AS one (x)
LEFT JOIN batches b ON true
ORDER BY b.id;
