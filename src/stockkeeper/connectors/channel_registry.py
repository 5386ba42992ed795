"""Which adapter serves which channel type: ``ADAPTERS``, keyed by the config's ``type``.

The port (:mod:`stockkeeper.connectors.channels`) knows no adapter; each adapter module
imports the port, and this module imports the adapters. A new channel type is a config
model, an adapter module and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stockkeeper.config import (
    AmazonChannelConfig,
    ChannelConfig,
    ConfigError,
    OutboundWebhookChannelConfig,
    ShopifyChannelConfig,
)
from stockkeeper.connectors.amazon import AmazonChannel
from stockkeeper.connectors.channels import ChannelAdapter
from stockkeeper.connectors.http import OnCall
from stockkeeper.connectors.lwa import LwaCredentials
from stockkeeper.connectors.outbound_webhook import OutboundWebhookChannel
from stockkeeper.connectors.shopify import ShopifyChannel
from stockkeeper.observability.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Wiring:
    """What an adapter gets besides its config: secrets the caller resolved, and where
    it reports its calls."""

    token: str | None
    secret: str | None
    metrics: Metrics | None
    on_call: OnCall | None
    lwa: LwaCredentials | None = None


Factory = Callable[[ChannelConfig, Wiring], ChannelAdapter]


def _shopify(cfg: ChannelConfig, w: Wiring) -> ChannelAdapter:
    assert isinstance(cfg, ShopifyChannelConfig)
    return ShopifyChannel(cfg, token=w.token, metrics=w.metrics, on_call=w.on_call)


def _amazon(cfg: ChannelConfig, w: Wiring) -> ChannelAdapter:
    assert isinstance(cfg, AmazonChannelConfig)
    return AmazonChannel(cfg, token=w.token, lwa=w.lwa, metrics=w.metrics, on_call=w.on_call)


def _outbound_webhook(cfg: ChannelConfig, w: Wiring) -> ChannelAdapter:
    assert isinstance(cfg, OutboundWebhookChannelConfig)
    if not w.secret:
        raise ConfigError(
            f"connectors: {cfg.id} needs its signing secret (environment variable {cfg.secret_env})"
        )
    return OutboundWebhookChannel(
        cfg, secret=w.secret, token=w.token, metrics=w.metrics, on_call=w.on_call
    )


ADAPTERS: dict[str, Factory] = {
    "shopify": _shopify,
    "amazon": _amazon,
    "outbound_webhook": _outbound_webhook,
}


def make_channel(
    cfg: ChannelConfig,
    *,
    token: str | None,
    secret: str | None = None,
    metrics: Metrics | None = None,
    on_call: OnCall | None = None,
    lwa: LwaCredentials | None = None,
) -> ChannelAdapter:
    """The adapter for ``cfg``'s channel type.

    Secrets are the caller's to resolve from the variables the config names (``token_env``,
    ``secret_env``): ``token`` is the channel's API token (None: send none), ``secret``
    the outbound webhook's signing secret (required there), ``lwa`` Amazon's Login with
    Amazon credentials. Adapters never read the environment.
    """
    factory = ADAPTERS.get(cfg.type)
    if factory is None:
        raise ConfigError(f"connectors: {cfg.id}: no channel adapter for type {cfg.type!r}")
    return factory(cfg, Wiring(token, secret, metrics, on_call, lwa))
