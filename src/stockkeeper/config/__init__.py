"""Configuration: one YAML file, overridden by STOCKKEEPER_SECTION__KEY variables.

Read once at start, validated, passed down. A missing, unknown or invalid key stops
the process with a message that names the key (``ConfigError``).

Import everything from here. Where it lives: the shared pieces in ``base.py``, the
connector entries in ``connectors.py``, the other sections and :class:`Settings` in
``settings.py``, the YAML and environment loader in ``loader.py``.
"""

from __future__ import annotations

from stockkeeper.config.base import ConfigError as ConfigError
from stockkeeper.config.base import EnvName as EnvName
from stockkeeper.config.base import Section as Section
from stockkeeper.config.connectors import CONNECTOR_TYPES as CONNECTOR_TYPES
from stockkeeper.config.connectors import AmazonChannelConfig as AmazonChannelConfig
from stockkeeper.config.connectors import AnyConnector as AnyConnector
from stockkeeper.config.connectors import (
    AvailabilityRulesConfig as AvailabilityRulesConfig,
)
from stockkeeper.config.connectors import ChannelConfig as ChannelConfig
from stockkeeper.config.connectors import ConnectorConfig as ConnectorConfig
from stockkeeper.config.connectors import ErpConnectorConfig as ErpConnectorConfig
from stockkeeper.config.connectors import HttpConnectorConfig as HttpConnectorConfig
from stockkeeper.config.connectors import IngestOptions as IngestOptions
from stockkeeper.config.connectors import LocationMap as LocationMap
from stockkeeper.config.connectors import MarketplaceConnectorConfig as MarketplaceConnectorConfig
from stockkeeper.config.connectors import (
    OutboundWebhookChannelConfig as OutboundWebhookChannelConfig,
)
from stockkeeper.config.connectors import PricingConfig as PricingConfig
from stockkeeper.config.connectors import RuleOverrideConfig as RuleOverrideConfig
from stockkeeper.config.connectors import ShopifyChannelConfig as ShopifyChannelConfig
from stockkeeper.config.connectors import ShopifyLocationConfig as ShopifyLocationConfig
from stockkeeper.config.connectors import WebhookConnectorConfig as WebhookConnectorConfig
from stockkeeper.config.connectors import WmsConnectorConfig as WmsConnectorConfig
from stockkeeper.config.loader import CONFIG_ENV as CONFIG_ENV
from stockkeeper.config.loader import DEFAULT_CONFIG_FILE as DEFAULT_CONFIG_FILE
from stockkeeper.config.loader import ENV_PREFIX as ENV_PREFIX
from stockkeeper.config.loader import NOT_SETTINGS as NOT_SETTINGS
from stockkeeper.config.loader import load_settings as load_settings
from stockkeeper.config.settings import ApiConfig as ApiConfig
from stockkeeper.config.settings import BrokerConfig as BrokerConfig
from stockkeeper.config.settings import BulkConfig as BulkConfig
from stockkeeper.config.settings import CarrierConfig as CarrierConfig
from stockkeeper.config.settings import ConcurrencyConfig as ConcurrencyConfig
from stockkeeper.config.settings import DatabaseConfig as DatabaseConfig
from stockkeeper.config.settings import DispatcherConfig as DispatcherConfig
from stockkeeper.config.settings import LoggingConfig as LoggingConfig
from stockkeeper.config.settings import MonitoringConfig as MonitoringConfig
from stockkeeper.config.settings import OrdersConfig as OrdersConfig
from stockkeeper.config.settings import Port as Port
from stockkeeper.config.settings import PropagationConfig as PropagationConfig
from stockkeeper.config.settings import ReservationsConfig as ReservationsConfig
from stockkeeper.config.settings import RetentionConfig as RetentionConfig
from stockkeeper.config.settings import Scope as Scope
from stockkeeper.config.settings import Settings as Settings
from stockkeeper.config.settings import Strategy as Strategy
from stockkeeper.config.settings import TokenConfig as TokenConfig
from stockkeeper.config.settings import TracingConfig as TracingConfig
