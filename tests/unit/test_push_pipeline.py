"""Claim sizing (D-350): batch_size under a trickle, the adapter's largest under a backlog."""

from __future__ import annotations

from stockkeeper.config import OutboundWebhookChannelConfig
from stockkeeper.services.push_pipeline import ClaimSizer, largest_batch


class Adapter:
    id = "shop"
    can_read = False

    def __init__(self, most: int | None) -> None:
        if most is not None:
            self.max_batch_size = most


def cfg(batch: int) -> OutboundWebhookChannelConfig:
    return OutboundWebhookChannelConfig.model_validate(
        {
            "id": "shop",
            "type": "outbound_webhook",
            "url": "http://x/",
            "secret_env": "S",
            "batch_size": batch,
        }
    )


def test_the_largest_batch_is_the_adapters_or_the_configured_one() -> None:
    assert largest_batch(Adapter(250), cfg(50)) == 250  # type: ignore[arg-type]
    assert largest_batch(Adapter(None), cfg(50)) == 50  # type: ignore[arg-type]
    assert largest_batch(Adapter(10), cfg(50)) == 50  # type: ignore[arg-type]


def test_a_full_claim_turns_to_the_largest_batch_and_a_short_one_back() -> None:
    sizer = ClaimSizer.of(Adapter(250), cfg(50))  # type: ignore[arg-type]
    assert sizer.size == 50
    sizer.claimed(200, 200)
    assert sizer.size == 250
    sizer.claimed(1000, 1000)
    assert sizer.size == 250
    sizer.claimed(1000, 3)
    assert sizer.size == 50
    sizer.claimed(0, 0)
    assert sizer.size == 50
