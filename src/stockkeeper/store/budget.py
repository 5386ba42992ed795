"""Whether the server has room for this process's connections, checked at start.

``max_connections`` is shared by every client of the server; a process that would open
more connections than are left waits, or fails with ``TooManyConnectionsError`` under
load, long after it started. Saying so at start, with the numbers, is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True)
class ServerRoom:
    """The server's connection slots when we looked."""

    max_connections: int
    reserved: int
    in_use: int

    @property
    def free(self) -> int:
        return max(0, self.max_connections - self.reserved - self.in_use)

    def short_by(self, still_to_open: int) -> int:
        """How many of ``still_to_open`` connections would find no slot (0: they fit)."""
        return max(0, still_to_open - self.free)


async def server_room(conn: Conn) -> ServerRoom:
    row = await conn.fetchrow(q("server_connections"))
    assert row is not None
    return ServerRoom(row["max_connections"], row["reserved"], row["in_use"])
