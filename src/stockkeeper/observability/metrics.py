"""Prometheus collectors, registered on a registry owned by the process (not at import)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every collector stockkeeper exports. One instance per process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Histogram(
            "stockkeeper_http_request_duration_seconds",
            "HTTP request latency by route, method and status.",
            ["app", "route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reservations = Counter(
            "stockkeeper_reservations_total",
            "Reservation requests by outcome (created, repeat, or the problem type).",
            ["result"],
            registry=r,
        )
        self.reserve_batch_size = Histogram(
            "stockkeeper_reserve_batch_size",
            "Requests per coalesced reservation batch (one transaction each, D-200).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
            registry=r,
        )
        self.reservation_retries = Counter(
            "stockkeeper_reservation_retries_total",
            "Reservation attempts that lost a race and re-read the stock.",
            ["strategy"],
            registry=r,
        )
        self.reservations_expired = Counter(
            "stockkeeper_reservations_expired_total",
            "Reservations expired by the expiry worker.",
            registry=r,
        )
        self.oversell = Counter(
            "stockkeeper_oversell_total",
            "Units the outside world sold or counted beyond what we held or had promised "
            "(the shortfall a sale, a level or a count caused), by source (D-121).",
            ["source"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "stockkeeper_outbox_backlog",
            "domain_event rows waiting to be published.",
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "stockkeeper_outbox_oldest_age_seconds",
            "Age of the oldest domain_event row waiting to be published (0 when none).",
            registry=r,
        )
        self.worker_errors = Counter(
            "stockkeeper_worker_errors_total",
            "Errors in a worker loop, by worker.",
            ["worker"],
            registry=r,
        )
        self.retention_deleted = Counter(
            "stockkeeper_retention_deleted_total",
            "Rows deleted by retention, by table.",
            ["table"],
            registry=r,
        )
        self.events_published = Counter(
            "stockkeeper_outbox_published_total",
            "Outbox events published with a broker confirm and marked SENT.",
            registry=r,
        )
        self.events_failed = Counter(
            "stockkeeper_outbox_failed_total",
            "Outbox events marked FAILED after their last publish attempt.",
            registry=r,
        )
        self.outbox_failed_open = Gauge(
            "stockkeeper_outbox_failed_rows",
            "domain_event rows marked FAILED (never published).",
            registry=r,
        )
        self.publish_failures = Counter(
            "stockkeeper_outbox_publish_failures_total",
            "Dispatcher batches that could not be published, by reason.",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "stockkeeper_queue_depth",
            "Messages waiting per queue.",
            ["queue"],
            registry=r,
        )
        self.consumer_messages = Counter(
            "stockkeeper_consumer_messages_total",
            "Messages handled by consumers, by outcome (applied, duplicate, stale, rejected: "
            "given back to the broker's dead-letter handling, the failure unrecorded).",
            ["consumer", "outcome"],
            registry=r,
        )
        self.consumer_retries = Counter(
            "stockkeeper_consumer_retries_total",
            "Messages sent back for a delayed retry after a failure.",
            ["consumer"],
            registry=r,
        )
        self.dead_letters = Counter(
            "stockkeeper_dead_letters_total",
            "Messages that landed in dead_letter, by queue.",
            ["queue"],
            registry=r,
        )
        self.dead_letters_open = Gauge(
            "stockkeeper_dead_letters_open",
            "Dead letters neither replayed nor discarded, by queue.",
            ["queue"],
            registry=r,
        )
        self.consumer_outage_waits = Counter(
            "stockkeeper_consumer_database_waits_total",
            "Pauses a consumer took because the database could not be reached (the "
            "message waited; no attempt was counted).",
            ["consumer"],
            registry=r,
        )
        self.listener_reconnects = Counter(
            "stockkeeper_listener_reconnects_total",
            "LISTEN connections found dead and opened again, by listener.",
            ["listener"],
            registry=r,
        )
        # -- connectors (every outside system) ------------------------------------
        self.connector_calls = Counter(
            "stockkeeper_connector_calls_total",
            "Calls to outside systems by outcome (ok, rate_limited, server_error, "
            "client_error, timeout, connect_error, invalid_response).",
            ["connector", "operation", "outcome"],
            registry=r,
        )
        self.connector_call_duration = Histogram(
            "stockkeeper_connector_call_duration_seconds",
            "Latency of calls to outside systems, each try on its own.",
            ["connector", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.connector_rate_limit_wait = Counter(
            "stockkeeper_connector_rate_limit_wait_seconds_total",
            "Seconds spent waiting for our own rate limit or the system's Retry-After.",
            ["connector", "reason"],
            registry=r,
        )
        # -- WMS -----------------------------------------------------------------
        self.wms_sync_duration = Histogram(
            "stockkeeper_wms_sync_duration_seconds",
            "Wall time of WMS syncs by kind (batch, sku, full, incremental) and result.",
            ["connector", "kind", "result"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.wms_rows_synced = Counter(
            "stockkeeper_wms_rows_synced_total",
            "WMS snapshot rows reconciled.",
            ["connector"],
            registry=r,
        )
        self.wms_rows_rejected = Counter(
            "stockkeeper_wms_rows_rejected_total",
            "WMS snapshot rows refused by validation (dead-lettered with the reason).",
            ["connector"],
            registry=r,
        )
        self.wms_adjustments = Counter(
            "stockkeeper_wms_adjustments_total",
            "ADJUSTMENT ledger entries written by WMS syncs, by quantity moved.",
            ["connector", "quantity"],
            registry=r,
        )
        self.wms_shortfalls = Counter(
            "stockkeeper_wms_shortfalls_total",
            "SKUs a WMS snapshot left with less than was already promised.",
            ["connector"],
            registry=r,
        )
        self.wms_outbound_batch = Histogram(
            "stockkeeper_wms_outbound_batch_size",
            "Allocations and releases per call to the WMS.",
            ["connector"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.wms_outbound_sent = Counter(
            "stockkeeper_wms_outbound_items_total",
            "Outbound items by result (sent, duplicate, retried, dead_lettered).",
            ["connector", "result"],
            registry=r,
        )
        self.wms_outbound_pending = Gauge(
            "stockkeeper_wms_outbound_pending",
            "Outbound items waiting to be sent to the WMS.",
            ["connector"],
            registry=r,
        )
        # -- ingestion (ERPs, webhooks, marketplaces) ------------------------------
        self.ingest_records = Counter(
            "stockkeeper_ingest_records_total",
            "Ingested records by outcome (level_applied, level_stale, sale_applied, "
            "sale_duplicate, refused).",
            ["connector", "outcome"],
            registry=r,
        )
        self.ingest_unbooked_units = Counter(
            "stockkeeper_ingest_unbooked_sale_units_total",
            "Units a channel sold that on_hand could not cover, booked as oversold.",
            ["connector"],
            registry=r,
        )
        self.source_records_read = Counter(
            "stockkeeper_source_records_read_total",
            "Records read from a polled source (ERP view, marketplace deltas).",
            ["connector"],
            registry=r,
        )
        self.source_cursor_age = Gauge(
            "stockkeeper_source_cursor_age_seconds",
            "Age of the newest source change read (now minus the cursor's timestamp).",
            ["connector"],
            registry=r,
        )
        self.poll_duration = Histogram(
            "stockkeeper_poll_duration_seconds",
            "Wall time of one poll of a source (query or call, and queueing the page).",
            ["connector"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.poll_paused = Counter(
            "stockkeeper_poll_paused_total",
            "Polls skipped because the ingest backlog was above its high-water mark.",
            ["connector"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "stockkeeper_circuit_state",
            "A connector's circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["connector"],
            registry=r,
        )
        self.webhook_requests = Counter(
            "stockkeeper_webhook_requests_total",
            "Webhook deliveries by answer status.",
            ["connector", "status"],
            registry=r,
        )
        # -- sales channels (propagation) ------------------------------------------
        self.sync_lag = Histogram(
            "stockkeeper_sync_lag_seconds",
            "From the commit of a change to the channel's acknowledgement of a push that "
            "carries it (the oldest change a push carries, when several were coalesced).",
            ["channel"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.sync_lag_p99 = Gauge(
            "stockkeeper_sync_lag_p99_seconds",
            "p99 sync lag over monitoring.lag_window_s, changes still waiting included.",
            ["channel"],
            registry=r,
        )
        self.sync_lag_alerting = Gauge(
            "stockkeeper_sync_lag_alerting",
            "1 while a channel's p99 sync lag is over monitoring.p99_lag_alert_ms.",
            ["channel"],
            registry=r,
        )
        self.sync_lag_alerts = Counter(
            "stockkeeper_sync_lag_alerts_total",
            "Sync lag alerts fired (one per episode).",
            ["channel"],
            registry=r,
        )
        self.channel_changes = Counter(
            "stockkeeper_channel_changes_total",
            "Level changes per channel by verdict (push, echo, noop, held, stale).",
            ["channel", "verdict"],
            registry=r,
        )
        self.channel_pushes = Counter(
            "stockkeeper_channel_pushes_total",
            "SKU pushes by result (ok, noop, unlisted, retried, dead_lettered).",
            ["channel", "result"],
            registry=r,
        )
        self.channel_token_exchanges = Counter(
            "stockkeeper_channel_token_exchanges_total",
            "Access-token exchanges of a channel (Login with Amazon) by result (ok, refused, "
            "unavailable); a refused one needs new credentials.",
            ["channel", "result"],
            registry=r,
        )
        self.channel_feeds = Counter(
            "stockkeeper_channel_feeds_total",
            "Bulk feeds a channel finished (Amazon JSON_LISTINGS_FEED) by result (done, "
            "fatal, cancelled, timeout); all but done are retried as a batch.",
            ["channel", "result"],
            registry=r,
        )
        self.channel_coalesced = Counter(
            "stockkeeper_channel_coalesced_total",
            "Level changes that needed no push of their own (they rode along with a newer "
            "one, or the channel already showed the figure).",
            ["channel"],
            registry=r,
        )
        self.channel_pending = Gauge(
            "stockkeeper_channel_pending",
            "SKUs with a push due on the channel.",
            ["channel"],
            registry=r,
        )
        self.channel_unlisted = Gauge(
            "stockkeeper_channel_unlisted",
            "SKUs the channel said it does not list (probed again by a level change "
            "after unlisted_recheck_s; listed through GET /admin/channels/{channel}/unlisted).",
            ["channel"],
            registry=r,
        )
        self.channel_divergence = Counter(
            "stockkeeper_channel_divergence_total",
            "SKUs the divergence sample found the channel showing something other than "
            "what it acknowledged (edited behind our back); each is pushed again.",
            ["channel"],
            registry=r,
        )
        self.channel_drift = Counter(
            "stockkeeper_channel_drift_repaired_total",
            "SKUs a drift repair found showing another level on the channel than ours.",
            ["channel"],
            registry=r,
        )
        # -- orders (the saga) -----------------------------------------------------
        self.orders_placed = Counter(
            "stockkeeper_orders_placed_total",
            "Orders accepted by POST /orders (repeats not counted).",
            registry=r,
        )
        self.order_decision = Histogram(
            "stockkeeper_order_decision_seconds",
            "Time from an order's PENDING to AWAITING_PAYMENT or FAILED, by that status.",
            ["status"],
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0),
            registry=r,
        )
        self.orders_final = Counter(
            "stockkeeper_orders_final_total",
            "Orders that reached a final status (FAILED, SHIPPED, CANCELLED, EXPIRED).",
            ["status"],
            registry=r,
        )
        self.orders_no_carrier = Counter(
            "stockkeeper_orders_no_carrier_total",
            "Paid orders for which no carrier could be chosen (order.no_carrier).",
            registry=r,
        )

    def start_known(
        self,
        *,
        queues: Iterable[str] = (),
        ingest: Iterable[str] = (),
        wms: Iterable[str] = (),
        channels: Iterable[str] = (),
    ) -> None:
        """Create at 0 the series of counters that alerts watch, for the label values
        known at start (the queues, the connectors): a series that first appears at 1
        has no earlier sample, so Prometheus' ``increase()`` misses that first event
        and the alert on it never fires (D-409). Scrapes show them at 0 from the start."""
        for queue in queues:
            self.dead_letters.labels(queue=queue)
        # Our own decisions never oversell: the figure that must stay 0 reads 0 (D-395).
        self.oversell.labels(source="api")
        for connector in ingest:
            self.oversell.labels(source=connector)
        for connector in wms:
            self.oversell.labels(source=f"wms:{connector}")
            self.wms_shortfalls.labels(connector=connector)
        for channel in channels:
            self.sync_lag_alerts.labels(channel=channel)
