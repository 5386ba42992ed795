"""Use cases. Each runs in one transaction that also writes its outbox events."""
