"""Effect handlers for the messaging crash tests, run by ``stockkeeper consume`` children.

The handler writes one row into ``test_effect`` per message it applies. The table has
no unique constraint on purpose: a message that took effect twice shows as two rows.
The row commits together with the consumer's ``processed_message`` mark.

Imported in a child process (``PYTHONPATH`` = the repository root), so keep it free of
test-only dependencies.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stockkeeper.messaging.envelope import Envelope
    from stockkeeper.store.pool import Conn

# ``id`` orders the effects as they were applied; ``pid`` tells which process did it.
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS test_effect (
    id          bigserial PRIMARY KEY,
    message_id  uuid NOT NULL,
    sku         text,
    sequence    bigint,
    type        text NOT NULL,
    pid         integer NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

INSERT = (
    "INSERT INTO test_effect (message_id, sku, sequence, type, pid) VALUES ($1, $2, $3, $4, $5)"
)


async def record(conn: Conn, env: Envelope) -> None:
    """Apply one message: one ``test_effect`` row."""
    await conn.execute(INSERT, env.id, env.sku, env.sequence, env.type, os.getpid())
