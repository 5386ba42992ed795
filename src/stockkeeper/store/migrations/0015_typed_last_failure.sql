-- Each connector's last failure (a poll, a push or a sync that failed) and when it
-- happened, kept after the connector recovers, for /admin/status. ``last_error`` is the
-- circuit breaker's, cleared when the circuit closes; these are not.
ALTER TABLE connector_state
    ADD COLUMN last_failure      text,
    ADD COLUMN last_failure_at   timestamptz;
