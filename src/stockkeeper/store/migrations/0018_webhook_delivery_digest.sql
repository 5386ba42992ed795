-- What each webhook delivery carried (SHA-256 of its parsed body in a canonical form),
-- so a delivery id seen again with another body is refused instead of being taken as
-- a duplicate and its records dropped (D-441). Deliveries kept from before have none
-- and are taken as duplicates, as they were.
ALTER TABLE webhook_delivery ADD COLUMN digest bytea;
