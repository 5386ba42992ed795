-- What the outside world sold beyond on_hand (D-120): units owed to buyers, booked by the
-- SALE that oversold them, so no sold unit vanishes. They count against available and
-- in shortfall like a promise; the ledger carries their delta like any other figure, so
-- the audit still finds every figure equal to the sum of its ledger deltas.
ALTER TABLE sku_batch ADD COLUMN oversold bigint NOT NULL DEFAULT 0 CHECK (oversold >= 0);
ALTER TABLE inventory_ledger ADD COLUMN d_oversold bigint NOT NULL DEFAULT 0;
