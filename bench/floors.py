"""Channel floors: the least time a sales channel's own limits allow for N SKUs.

Each floor is computed from the limits the sandbox channel is configured with (the
documented limits of the real channel, or what the connector config says the receiver
takes), never from what we measured. docs/channels.md ("Channel floors") defines them.

* Shopify (cost bucket of ``bucket`` points restoring ``restore`` a second): a push of
  ``k`` ≤ 250 SKUs (``inventorySetQuantities`` takes at most 250 quantities) costs one
  mutation, 10 points whatever ``k``; a SKU Shopify has not been asked about yet needs
  its inventory item looked up first, ``inventoryItems(first: k)``: 2 + k points. The
  floor is the points of every call, less the full bucket at the start, at the restore
  rate.
* Webhook receiver (``rate_limit_rps`` calls a second with a burst of that many,
  ``batch_size`` SKUs a call): the calls past the burst at the rate.
* Amazon feeds (createFeed ``rate`` a second with a burst of ``burst``, at most
  ``max_messages`` SKUs a feed, the processing delay): the feeds past the burst at the
  createFeed rate, plus one processing delay.
* Shopify read-back (drift repair): ``inventoryItems`` 2 + 1 per SKU and ``nodes()``
  1 + 2 per id, in chunks of at most 250, less the bucket, at the restore rate.
"""

from __future__ import annotations

import math

SHOPIFY_MAX_ITEMS = 250  # inventorySetQuantities quantities, nodes() ids, connection pages
SHOPIFY_MUTATION_COST = 10.0


def shopify_push_floor(skus: int, bucket: float, restore: float, *, lookups: bool) -> float:
    """Seconds Shopify's cost bucket needs to take ``skus`` new figures (``lookups``:
    every SKU's inventory item still to be looked up)."""
    calls = math.ceil(skus / SHOPIFY_MAX_ITEMS)
    points = calls * SHOPIFY_MUTATION_COST
    if lookups:
        points += calls * 2.0 + skus
    return max(0.0, points - bucket) / restore


def shopify_read_points(skus: int, page: int = SHOPIFY_MAX_ITEMS) -> float:
    """What reading ``skus`` SKUs back costs in Shopify's points, in pages of ``page``."""
    pages = math.ceil(skus / page)
    per_page = min(skus, page)
    chunks = math.ceil(per_page / SHOPIFY_MAX_ITEMS)
    return pages * (chunks * (2 + 1) + per_page * (1 + 2))


def shopify_read_floor(skus: int, bucket: float, restore: float, page: int) -> float:
    return max(0.0, shopify_read_points(skus, page) - bucket) / restore


def webhook_floor(skus: int, rate_rps: float, batch: int) -> float:
    """Seconds a receiver taking ``rate_rps`` calls a second (burst of as many) of
    ``batch`` SKUs needs for ``skus``."""
    calls = math.ceil(skus / batch)
    burst = max(1.0, rate_rps)
    return max(0.0, calls - burst) / rate_rps


def amazon_feeds_floor(
    skus: int, max_messages: int, rate: float, burst: float, delay_s: float
) -> float:
    """Seconds Amazon's Feeds API needs for ``skus``: feeds of ``max_messages``, createFeed
    at ``rate`` a second past a burst of ``burst``, and one processing delay."""
    feeds = math.ceil(skus / max_messages)
    return max(0.0, feeds - burst) / rate + delay_s
