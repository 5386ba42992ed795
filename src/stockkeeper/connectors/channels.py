"""The sales-channel port: what the propagator needs of a channel, whatever its wire format.

One adapter per channel type (``shopify``, ``amazon``, ``outbound_webhook``), each in its
own module, each built from its connector config by :func:`make_channel`. An adapter
speaks the channel's wire format through :class:`~stockkeeper.connectors.http.HttpCaller`
(our pace, timeouts, retries of 429/5xx honouring ``Retry-After``) and never touches SQL:
what it learns about a SKU (the channel's own id for it, what the channel shows) comes
back in :class:`PushOutcome` for the propagator to keep.

Failure contract of :meth:`ChannelAdapter.push`:

* the channel cannot take the call now (down, throttling past our patience, timing out):
  raise :class:`~stockkeeper.connectors.http.ConnectorUnavailable`; the whole batch is
  retried later with backoff;
* the channel refuses the whole call (a 4xx that trying again will not fix):
  raise :class:`~stockkeeper.connectors.http.ConnectorRejected`; the propagator splits
  the batch and, for a single item, dead-letters it;
* otherwise return one :class:`PushOutcome` per item, in any order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from stockkeeper.config import (
    AmazonChannelConfig,
    ChannelConfig,
    ConfigError,
    OutboundWebhookChannelConfig,
    ShopifyChannelConfig,
)
from stockkeeper.connectors.http import OnCall
from stockkeeper.observability.metrics import Metrics

PushStatus = Literal["ok", "unlisted", "rejected"]


@dataclass(frozen=True, slots=True)
class Push:
    """Show ``quantity`` as available for ``sku`` (our level at ``version``)."""

    sku: str
    quantity: int
    version: int
    # What we believe the channel shows now (what we last pushed, or read back); None
    # when we have never told it anything. Shopify's changeFromQuantity.
    previous: int | None = None
    # The channel's own id for the SKU, as an earlier outcome reported it (Shopify's
    # inventory item gid); None: the adapter looks it up.
    channel_ref: str | None = None


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What became of one :class:`Push`.

    ``ok``: the channel acknowledged; ``quantity`` is what it shows now.
    ``unlisted``: the channel has no listing for the SKU (not sold there); nothing to do
    until it is listed.
    ``rejected``: the channel refused this item for good; ``error`` says why.
    """

    sku: str
    status: PushStatus
    quantity: int | None = None
    channel_ref: str | None = None
    error: str | None = None


class ChannelAdapter(Protocol):
    """A sales channel we push availability to."""

    @property
    def id(self) -> str:
        """The connector id (metrics, sync state, dead letters)."""

    @property
    def can_read(self) -> bool:
        """Whether :meth:`read` can report the channel's levels (drift repair)."""

    async def push(self, items: Sequence[Push]) -> list[PushOutcome]:
        """Set each item's available quantity on the channel (at most ``batch_size``
        items, distinct SKUs). See the module docstring for the failure contract."""

    async def read(self, skus: Sequence[str], refs: Mapping[str, str]) -> dict[str, int | None]:
        """What the channel shows as available per SKU; None for a SKU it does not list.
        ``refs`` holds the channel's ids already known for some of the SKUs. Raises
        ``ConnectorUnavailable`` like push. Only called when :attr:`can_read`."""

    async def aclose(self) -> None: ...


def make_channel(
    cfg: ChannelConfig,
    *,
    token: str | None,
    secret: str | None = None,
    metrics: Metrics | None = None,
    on_call: OnCall | None = None,
) -> ChannelAdapter:
    """The adapter for ``cfg``'s channel type.

    Secrets are the caller's to resolve from the variables the config names (``token_env``,
    ``secret_env``): ``token`` is the channel's API token (None: send none), ``secret``
    the outbound webhook's signing secret (required there). Adapters never read the
    environment.
    """
    # Imported here: the adapters import this module for Push and PushOutcome.
    if isinstance(cfg, ShopifyChannelConfig):
        from stockkeeper.connectors.shopify import ShopifyChannel

        return ShopifyChannel(cfg, token=token, metrics=metrics, on_call=on_call)
    if isinstance(cfg, AmazonChannelConfig):
        from stockkeeper.connectors.amazon import AmazonChannel

        return AmazonChannel(cfg, token=token, metrics=metrics, on_call=on_call)
    if isinstance(cfg, OutboundWebhookChannelConfig):
        from stockkeeper.connectors.outbound_webhook import OutboundWebhookChannel

        if not secret:
            raise ConfigError(
                f"connectors: {cfg.id} needs its signing secret (environment variable "
                f"{cfg.secret_env})"
            )
        return OutboundWebhookChannel(
            cfg, secret=secret, token=token, metrics=metrics, on_call=on_call
        )
    raise ConfigError(f"connectors: {cfg.id}: no channel adapter for type {cfg.type!r}")
