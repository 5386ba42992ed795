-- A repeat under an Idempotency-Key, and a receipt or adjustment repeated by its
-- reference_id, answer with the first answer as it was sent (D-439): json keeps the
-- text it is given, where jsonb reorders the keys (shorter first) and drops none of the
-- meaning but all of the byte-for-byte equality a client may check. Answers already
-- kept stay in jsonb's order. Nothing compares or indexes these columns.
ALTER TABLE idempotency_key ALTER COLUMN response TYPE json USING response::json;
ALTER TABLE applied_reference ALTER COLUMN response TYPE json USING response::json;
