"""The project's own database errors: driver errors become these at the store edge, so
the code above ``store/`` never imports asyncpg to catch one."""

from __future__ import annotations


class StoreError(Exception):
    """A statement failed in the database."""


class StoreUnavailable(StoreError):
    """The database cannot be reached just now (down, restarting, connection lost)."""
