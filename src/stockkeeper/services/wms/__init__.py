"""WMS use cases: force-sync requests, reconciling snapshot pages, outbound items.

One service, :class:`WmsService`, in three parts of one concern each: sync requests and
their lifecycle (``requests``), a snapshot page reconciled into our books
(``snapshot``), and what the WMS must be told (``outbound``).
"""

from __future__ import annotations

from stockkeeper.services.wms.base import WmsBase
from stockkeeper.services.wms.outbound import OUTBOUND_QUEUE, OUTBOUND_REARM, OutboundBook
from stockkeeper.services.wms.requests import (
    FORCE_COMMAND,
    SCHEDULED_COMMAND,
    BatchIdentity,
    SyncJob,
    SyncRequest,
    SyncRequests,
    WmsStatus,
)
from stockkeeper.services.wms.snapshot import (
    SYNC_DEAD_LETTER_QUEUE,
    PageResult,
    Rejected,
    SnapshotSync,
)

__all__ = [
    "FORCE_COMMAND",
    "OUTBOUND_QUEUE",
    "OUTBOUND_REARM",
    "SCHEDULED_COMMAND",
    "SYNC_DEAD_LETTER_QUEUE",
    "BatchIdentity",
    "PageResult",
    "Rejected",
    "SyncJob",
    "SyncRequest",
    "WmsBase",
    "WmsService",
    "WmsStatus",
]


class WmsService(SyncRequests, SnapshotSync, OutboundBook):
    """Everything the WMS workers and the admin API do to our books."""
