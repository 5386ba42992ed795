"""The answer of ``POST /webhooks/{connector}``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class WebhookOut(BaseModel):
    event_id: str
    status: Literal["queued", "duplicate", "ignored"]
    topic: str | None = None
    records: int | None = None
    refused: list[dict[str, Any]] | None = None
