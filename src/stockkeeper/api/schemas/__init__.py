"""Request and response bodies, one module per concept; every input is validated here,
strictly.

- ``fields``: the id rule (``printable``), the id and quantity types, ``Body``, ``as_json``
- ``reservations``: reserve, release, confirm, fulfil
- ``stock``: receipts, adjustments, levels, batches, the ledger
- ``admin``: forced WMS syncs, dead letters, a channel's unlisted SKUs
- ``status``: ``GET /admin/status``
- ``webhooks``: the webhook answer
- ``problem``: the problem+json body and each route's ``responses=``

Every name the single ``api/schemas.py`` had is importable from the package as before
(``from stockkeeper.api import schemas``, then ``schemas.ReserveIn``). The order routes'
bodies are in ``api/order_schemas.py`` and the admin lists' in ``api/list_schemas.py``:
the latter's module path is part of the published OpenAPI document (D-413).
"""

from __future__ import annotations

from stockkeeper.api.schemas.admin import (
    DeadLetterListOut,
    DeadLetterOut,
    UnlistedListOut,
    UnlistedSkuOut,
    WmsSyncIn,
    WmsSyncOut,
)
from stockkeeper.api.schemas.fields import (
    ID_PART,
    ID_TEXT,
    MAX_ROW_ID,
    PRINTABLE,
    REFUSED_CATEGORIES,
    SHORT_TEXT,
    Body,
    LocationCode,
    LotNumber,
    OrderId,
    Quantity,
    Reason,
    ReferenceId,
    Sku,
    as_json,
    printable,
)
from stockkeeper.api.schemas.problem import (
    AUTHENTICATED,
    ERROR_STATUSES,
    Problem,
    problems,
    repeated,
)
from stockkeeper.api.schemas.reservations import (
    AllocationOut,
    LineIn,
    LineOut,
    OrderRef,
    ReleaseIn,
    ReservationOut,
    ReserveIn,
    reservation_json,
)
from stockkeeper.api.schemas.status import (
    BrokerStatusOut,
    ChannelStatusOut,
    ConnectorStatusOut,
    CursorOut,
    FailureOut,
    LagOut,
    OutboxStatusOut,
    StatusOut,
    WmsStatusOut,
)
from stockkeeper.api.schemas.stock import (
    AdjustmentIn,
    AdjustmentOut,
    BatchOut,
    LedgerEntryOut,
    LedgerOut,
    LevelOut,
    ReceiptIn,
    ReceiptOut,
    StockListOut,
    StockOut,
)
from stockkeeper.api.schemas.webhooks import (
    WebhookOut,
)

__all__ = [
    "AUTHENTICATED",
    "ERROR_STATUSES",
    "ID_PART",
    "ID_TEXT",
    "MAX_ROW_ID",
    "PRINTABLE",
    "REFUSED_CATEGORIES",
    "SHORT_TEXT",
    "AdjustmentIn",
    "AdjustmentOut",
    "AllocationOut",
    "BatchOut",
    "Body",
    "BrokerStatusOut",
    "ChannelStatusOut",
    "ConnectorStatusOut",
    "CursorOut",
    "DeadLetterListOut",
    "DeadLetterOut",
    "FailureOut",
    "LagOut",
    "LedgerEntryOut",
    "LedgerOut",
    "LevelOut",
    "LineIn",
    "LineOut",
    "LocationCode",
    "LotNumber",
    "OrderId",
    "OrderRef",
    "OutboxStatusOut",
    "Problem",
    "Quantity",
    "Reason",
    "ReceiptIn",
    "ReceiptOut",
    "ReferenceId",
    "ReleaseIn",
    "ReservationOut",
    "ReserveIn",
    "Sku",
    "StatusOut",
    "StockListOut",
    "StockOut",
    "UnlistedListOut",
    "UnlistedSkuOut",
    "WebhookOut",
    "WmsStatusOut",
    "WmsSyncIn",
    "WmsSyncOut",
    "as_json",
    "printable",
    "problems",
    "repeated",
    "reservation_json",
]
