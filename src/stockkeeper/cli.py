"""The ``stockkeeper`` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import typing
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from stockkeeper import __version__
from stockkeeper.config import ConfigError, ConnectorConfig, Settings, load_settings
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import configure
from stockkeeper.observability.progress import progress

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container
    from stockkeeper.store.pool import Connections

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="stockkeeper",
    help="Inventory system of record: reservations that never oversell, and a ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: paragraphs re-wrapped to the terminal, no "<str>" type markers.
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file (default: $STOCKKEEPER_CONFIG or ./stockkeeper.yaml if it exists).",
    ),
]
T = TypeVar("T")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"stockkeeper {__version__}")
        raise typer.Exit


@app.callback()
def stockkeeper(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Inventory system of record: reservations that never oversell, and a ledger."""


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"stockkeeper: {exc}", err=True)
        raise typer.Exit(2) from None
    log = settings.logging
    configure(log.level, log.json_output, access_log=log.access_log)
    tracing.configure(settings.tracing)
    return settings


def _run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    result: T = uvloop.run(main())
    return result


async def _build(
    settings: Settings,
    *,
    run_migrations: bool = True,
    needs: Connections | None = None,
    uses: Iterable[ConnectorConfig] | None = (),
    create_database: bool = False,
) -> Container:
    """The container, or exit 2 naming what is wrong (a secret not set, no database).

    ``uses``: the connectors the command talks to, whose secrets it needs (None: all);
    ``create_database``: whether a missing embedded database may be made (only the
    commands that serve do; the others would report on an empty one).
    """
    from stockkeeper.bootstrap import build
    from stockkeeper.store.pool import ONE_OFF

    try:
        return await build(
            settings,
            run_migrations=run_migrations,
            needs=needs or ONE_OFF,
            uses=uses,
            create_database=create_database,
        )
    except ConfigError as exc:
        typer.echo(f"stockkeeper: {exc}", err=True)
        raise typer.Exit(2) from None


def _serve(settings: Settings, services: list[str], consumers: list[Any] | None = None) -> None:
    from stockkeeper.messaging.rabbitmq import TopologyMismatch
    from stockkeeper.store.pool import Connections
    from stockkeeper.wiring import USES_BROKER, connections, connectors_used
    from stockkeeper.workers.runner import serve

    # The services' connections, and one for each consumer of the user's own (with the
    # embedded queue's LISTEN when no service brings it).
    needs = connections(settings, services)
    if consumers:
        listen = 0 if settings.broker.url or USES_BROKER.intersection(services) else 1
        needs += Connections(len(consumers), session=listen)

    uses = connectors_used(settings, services)

    async def main() -> None:
        container = await _build(settings, needs=needs, uses=uses, create_database=True)
        try:
            await serve(container, services, consumers or [])
        finally:
            await container.close()

    try:
        _run(main)
    except TopologyMismatch as exc:  # an operator's decision (D-160): say it, no traceback
        typer.echo(f"stockkeeper: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def up(config: ConfigOption = None) -> None:
    """Run everything in one process.

    inventory-api, admin-api and every worker; with no database.url, an embedded
    PostgreSQL in the data directory (made on the first start). One `up` per data
    directory: a second one says which pid already runs it."""
    from stockkeeper.instance_lock import AlreadyRunning, instance_lock
    from stockkeeper.wiring import SERVICES

    settings = _settings(config)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(instance_lock(settings.data_dir))
        except AlreadyRunning as exc:
            typer.echo(f"stockkeeper: {exc}", err=True)
            raise typer.Exit(1) from None
        _up(settings, list(SERVICES))


def _up(settings: Settings, services: list[str]) -> None:
    api = settings.api
    typer.echo(
        f"stockkeeper {__version__}: inventory-api on http://{api.host}:{api.inventory_port}, "
        f"admin-api on http://{api.host}:{api.admin_port}"
        + ("" if settings.database.url else f", embedded PostgreSQL in {settings.data_dir}"),
        err=True,
    )
    _serve(settings, services)


@app.command()
def run(
    service: Annotated[
        str,
        typer.Argument(
            help="inventory-api, admin-api, expiry, dispatcher, wms-sync, wms-outbound, "
            "ingest, pollers, propagator or saga"
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Run one service, as a separate process in production."""
    from stockkeeper.wiring import SERVICES

    if service not in SERVICES:
        typer.echo(
            f"stockkeeper: unknown service {service!r}; one of: {', '.join(SERVICES)}", err=True
        )
        raise typer.Exit(2)
    _serve(_settings(config), [service])


@app.command()
def consume(
    queue: Annotated[str, typer.Argument(help="queue to consume, e.g. channel.propagation")],
    handler: Annotated[
        str, typer.Argument(help="module:function, an async (conn, envelope) -> None")
    ],
    name: Annotated[
        str | None, typer.Option(help="consumer name, its idempotency scope (default: handler)")
    ] = None,
    drop_stale: Annotated[
        bool, typer.Option(help="skip events older than the newest applied for their SKU")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run a consumer of your own.

    It runs through the standard runner (idempotency, retries, dead letters); the
    handler's effect commits with the message's processed mark."""
    import importlib

    from stockkeeper.wiring import ConsumerSpec

    module_name, _, attr = handler.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        typer.echo(f"stockkeeper: cannot load handler {handler!r}: {exc}", err=True)
        raise typer.Exit(2) from None
    spec = ConsumerSpec(name or handler, queue, fn, drop_stale)
    _serve(_settings(config), [], [spec])


sandbox_app = typer.Typer(
    help="Stand-ins for the systems around stockkeeper.\n\n"
    "A WMS, an ERP database, a marketplace and sales channels speaking their owners' "
    "wire formats, for trials and tests. Each prints the connectors: entries to paste "
    "into stockkeeper.yaml; their control routes are in docs/sandboxes.md.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)
app.add_typer(sandbox_app, name="sandbox")
SANDBOX_MISSING = (
    "stockkeeper: the sandbox commands need the stand-ins, a separate package: "
    "pip install 'stockkeeper[sandbox]'"
)


@sandbox_app.callback()
def sandbox_installed() -> None:
    """Exit 2 with one line saying how to install the stand-ins when they are not."""
    try:
        import stockkeeper_sandbox  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "stockkeeper_sandbox":
            raise
        typer.echo(SANDBOX_MISSING, err=True)
        raise typer.Exit(2) from None


@sandbox_app.command("wms")
def sandbox_wms(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 9300,
    batches: Annotated[int, typer.Option(help="batches to seed the stock with")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the generated stock")] = 0,
    token_env: Annotated[
        str | None, typer.Option(help="require this variable's value as bearer token")
    ] = None,
) -> None:
    """A WMS with its own stock.

    Paged snapshots, changes since a token, batch allocate/release with
    de-duplication, a rate limit and fault injection (PUT /_sandbox/faults). Prints
    the connectors: entry for stockkeeper.yaml."""
    import os

    from stockkeeper_sandbox.wms import run as run_wms

    token = os.environ.get(token_env) if token_env else None
    if token_env and not token:
        typer.echo(f"stockkeeper: environment variable {token_env} is not set", err=True)
        raise typer.Exit(2)
    typer.echo(_wms_snippet(_base_url(host, port), token_env))
    typer.echo(f"sandbox WMS on http://{host}:{port} with {batches} batches", err=True)
    run_wms(host, port, seed_batches=batches, seed=seed, token=token)


@sandbox_app.command("erp")
def sandbox_erp(
    admin_url: Annotated[
        str | None,
        typer.Option(
            help="a PostgreSQL where the ERP database may be created (default: stockkeeper's "
            "own, database.url or the embedded one)"
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="database name (kept; reused)")] = "sk_erp_sandbox",
    skus: Annotated[int, typer.Option(help="rows to seed an empty ERP with")] = 10_000,
    mutate_every: Annotated[float, typer.Option(help="seconds between changes")] = 5.0,
    mutate: Annotated[int, typer.Option(help="rows changed each time")] = 100,
    seed: Annotated[int, typer.Option(help="seed of the generated rows")] = 0,
    config: ConfigOption = None,
) -> None:
    """An ERP in its own PostgreSQL database.

    A read-only view stock_changes (sku, location, on_hand, price, last_modified) over
    rows it seeds and keeps changing. By default it uses the same PostgreSQL as
    stockkeeper (database.url, or the embedded one `stockkeeper up` runs in the data
    directory). Prints the connectors: entry for stockkeeper.yaml."""
    from stockkeeper_sandbox.erp import UNREACHABLE
    from stockkeeper_sandbox.erp import run as run_erp

    embedded = None
    if admin_url is None:
        from stockkeeper.bootstrap import database_url

        try:  # joins the embedded server (it stays up while we run), never makes one
            admin_url, embedded = database_url(_settings(config), create=False)
        except ConfigError as exc:
            typer.echo(f"stockkeeper: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        run_erp(admin_url, name, skus, mutate_every, mutate, seed, on_ready=_print_erp_snippet)
    except UNREACHABLE as exc:
        typer.echo(f"stockkeeper: cannot reach the PostgreSQL for the ERP: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        if embedded is not None:
            embedded.stop()


def _print_erp_snippet(url: str) -> None:
    from stockkeeper_sandbox.erp import reader_url

    typer.echo(_erp_snippet(reader_url(url)))
    typer.echo(f"sandbox ERP in {url}; Ctrl-C stops it (the database is kept)", err=True)


@sandbox_app.command("marketplace")
def sandbox_marketplace(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 9400,
    skus: Annotated[int, typer.Option(help="SKUs to seed levels for")] = 100,
    seed: Annotated[int, typer.Option(help="seed of the generated levels")] = 0,
    token_env: Annotated[
        str | None, typer.Option(help="require this variable's value as bearer token")
    ] = None,
) -> None:
    """A marketplace with a delta feed.

    GET /v1/deltas?since=, sales you can add (POST /_sandbox/sales) and fault
    injection (PUT /_sandbox/faults). Prints the connectors: entry for
    stockkeeper.yaml."""
    import os

    from stockkeeper_sandbox.marketplace import run as run_marketplace

    token = os.environ.get(token_env) if token_env else None
    if token_env and not token:
        typer.echo(f"stockkeeper: environment variable {token_env} is not set", err=True)
        raise typer.Exit(2)
    typer.echo(_marketplace_snippet(_base_url(host, port), token_env))
    typer.echo(f"sandbox marketplace on http://{host}:{port}", err=True)
    run_marketplace(host, port, seed_skus=skus, token=token, seed=seed)


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _wms_snippet(url: str, token_env: str | None) -> str:
    """The ``connectors:`` entry that points stockkeeper at ``sandbox wms``."""
    token = f"\n    token_env: {token_env}" if token_env else ""
    return f"""connectors:
  - id: wms-sandbox
    type: wms
    url: {url}{token}"""


def _marketplace_snippet(url: str, token_env: str | None) -> str:
    """The ``connectors:`` entry that points stockkeeper at ``sandbox marketplace``."""
    token = f"\n    token_env: {token_env}" if token_env else ""
    return f"""connectors:
  - id: marketplace-sandbox
    type: marketplace
    adapter: generic
    url: {url}{token}"""


def _erp_snippet(url: str) -> str:
    """The ``connectors:`` entry that points stockkeeper at ``sandbox erp``'s database
    (``url``: a plain postgresql:// one; the poller's names its driver)."""
    dsn = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"""connectors:
  - id: erp-sandbox
    type: erp
    dsn: "{dsn}"
    view: stock_changes"""


def _channels_snippet(
    base: str, ports: tuple[int, int, int], seller_id: str, secret_env: str, token_env: str | None
) -> str:
    """The ``connectors:`` entries that point stockkeeper at ``sandbox channels``."""
    from stockkeeper_sandbox.amazon import DEFAULT_MARKETPLACE
    from stockkeeper_sandbox.shopify import DEFAULT_LOCATION, graphql_url

    shopify, amazon, webhook = (f"{base}:{port}" for port in ports)
    token = f"\n    token_env: {token_env}" if token_env else ""
    return f"""connectors:
  - id: shopify-sandbox
    type: shopify
    url: {graphql_url(shopify)}
    location_id: {DEFAULT_LOCATION}{token}
  - id: amazon-sandbox
    type: amazon
    url: {amazon}
    seller_id: {seller_id}
    marketplace_ids: [{DEFAULT_MARKETPLACE}]{token}
  - id: webhook-sandbox
    type: outbound_webhook
    url: {webhook}/stockkeeper/levels
    secret_env: {secret_env}
    batch_size: 100"""


@sandbox_app.command("channels")
def sandbox_channels(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    shopify_port: Annotated[int, typer.Option(help="the Shopify GraphQL API")] = 9500,
    amazon_port: Annotated[int, typer.Option(help="the Amazon Listings Items API")] = 9501,
    webhook_port: Annotated[int, typer.Option(help="the webhook receiver")] = 9502,
    webhook_secret_env: Annotated[
        str, typer.Option(help="variable holding the webhook signing secret (made up if unset)")
    ] = "SANDBOX_WEBHOOK_SECRET",  # noqa: S107 - the name of a variable
    shopify_bucket: Annotated[
        float, typer.Option(help="Shopify cost bucket size (maximumAvailable)", min=1)
    ] = 2000.0,
    shopify_restore_rate: Annotated[
        float, typer.Option(help="Shopify cost points restored per second", min=0.1)
    ] = 100.0,
    seller_id: Annotated[str, typer.Option(help="the Amazon seller id to accept")] = "A1SANDBOX",
    amazon_feed_delay: Annotated[
        float, typer.Option(help="seconds Amazon's sandbox takes to process a feed", min=0)
    ] = 0.0,
    unlisted: Annotated[
        list[str] | None, typer.Option(help="a SKU every channel keeps unlisted (repeatable)")
    ] = None,
    token_env: Annotated[
        str | None,
        typer.Option(help="require this variable's value as Shopify's and Amazon's access token"),
    ] = None,
) -> None:
    """Three sales channels in one process.

    Shopify's Admin GraphQL API (cost bucket, changeFromQuantity), Amazon's Listings
    Items API (5 requests/s) and a webhook receiver checking signatures. Prints the
    connectors: entries for stockkeeper.yaml; each has fault injection and control
    routes under /_sandbox (docs/sandboxes.md)."""
    import os
    import secrets
    import time

    from stockkeeper_sandbox.amazon import AmazonState
    from stockkeeper_sandbox.amazon import create_app as amazon_app
    from stockkeeper_sandbox.channel_webhook import WebhookReceiverState
    from stockkeeper_sandbox.channel_webhook import create_app as receiver_app
    from stockkeeper_sandbox.server import SandboxServer
    from stockkeeper_sandbox.shopify import ShopifyState
    from stockkeeper_sandbox.shopify import create_app as shopify_app

    token = os.environ.get(token_env) if token_env else None
    if token_env and not token:
        typer.echo(f"stockkeeper: environment variable {token_env} is not set", err=True)
        raise typer.Exit(2)
    secret = os.environ.get(webhook_secret_env)
    if not secret:
        secret = secrets.token_urlsafe(24)
        typer.echo(f"{webhook_secret_env} is not set; stockkeeper needs it too:", err=True)
        typer.echo(f"  export {webhook_secret_env}={secret}", err=True)
    keep = unlisted or []
    shopify = ShopifyState(
        bucket_size=shopify_bucket, restore_rate=shopify_restore_rate, unlisted=keep
    )
    servers = [
        SandboxServer(shopify_app(shopify, token), host, shopify_port),
        SandboxServer(
            amazon_app(
                AmazonState(seller_id=seller_id, unlisted=keep, feed_delay_s=amazon_feed_delay),
                token,
            ),
            host,
            amazon_port,
        ),
        SandboxServer(receiver_app(WebhookReceiverState(secret), None), host, webhook_port),
    ]
    try:
        for server in servers:
            server.start()
        shown = f"[{host}]" if ":" in host else host
        ports = (shopify_port, amazon_port, webhook_port)
        typer.echo(
            _channels_snippet(f"http://{shown}", ports, seller_id, webhook_secret_env, token_env)
        )
        typer.echo("sandbox channels running; Ctrl-C stops them", err=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.stop()


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Apply pending database migrations.

    Also done at every start. It never makes a new embedded database."""

    settings = _settings(config)

    async def main() -> None:
        container = await _build(settings, run_migrations=False)  # no connector, no new db
        try:
            from stockkeeper.store.migrate import available
            from stockkeeper.store.migrate import migrate as do_migrate

            # Under an advisory lock: a session of its own (direct, behind PgBouncer).
            async with container.session_pool.acquire() as conn:
                with progress(len(available()), "migrate", every=1) as bar:
                    applied = await do_migrate(conn, on_step=lambda _m: bar.advance())
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none"
            typer.echo(f"migrations applied: {names}")
        finally:
            await container.close()

    _run(main)


@app.command()
def audit(config: ConfigOption = None) -> None:
    """Check the stock invariant.

    Exits 1 with a report if anything is off. It reads the existing database and never
    makes a new embedded one."""
    from stockkeeper.services.audit import STEPS
    from stockkeeper.services.audit import audit as run_audit

    settings = _settings(config)

    async def main() -> bool:
        container = await _build(settings)
        try:
            async with container.pool.acquire() as conn:
                with progress(len(STEPS), "audit", every=1) as bar:
                    report = await run_audit(conn, on_step=lambda _s: bar.advance())
            typer.echo(report.render())
            return report.clean
        finally:
            await container.close()

    if not _run(main):
        raise typer.Exit(1)


@app.command("reconcile-channels")
def reconcile_channels(
    channel: Annotated[
        list[str] | None, typer.Option(help="only this channel (repeat for several)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Drift repair: compare the channels' levels with ours.

    Reads every SKU's level back from the channels that can report it and, where it
    differs from ours, makes a push due (the propagator sends it)."""
    from stockkeeper.bootstrap import channel_adapter
    from stockkeeper.config import ChannelConfig

    settings = _settings(config)
    configs = settings.connectors_of(ChannelConfig)
    unknown = sorted(set(channel or []) - {c.id for c in configs})
    if unknown:
        typer.echo(f"stockkeeper: no channel named {', '.join(unknown)}", err=True)
        raise typer.Exit(2)
    chosen = [c for c in configs if not channel or c.id in channel]

    async def main() -> None:
        container = await _build(settings, uses=chosen)
        try:
            for cfg in chosen:
                adapter = channel_adapter(cfg, container.metrics)
                try:
                    if not adapter.can_read:
                        typer.echo(f"{cfg.id}: cannot report its levels; skipped")
                        continue
                    total = await container.propagation.sku_count()
                    with progress(total, f"reconcile {cfg.id}") as bar:
                        d = await container.propagation.reconcile(adapter, on_page=bar.advance)
                finally:
                    await adapter.aclose()
                typer.echo(
                    f"{cfg.id}: {d.checked} SKUs checked, {d.drifted} differed (pushes due), "
                    f"{d.unlisted} not listed"
                )
        finally:
            await container.close()

    _run(main)


channels_app = typer.Typer(
    help="Sales channels: push every SKU again.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)
app.add_typer(channels_app, name="channels")


@channels_app.command("resync")
def channels_resync(
    channel: Annotated[str, typer.Argument(help="the channel's connector id")],
    sku: Annotated[
        list[str] | None, typer.Option("--sku", help="only this SKU (repeat for several)")
    ] = None,
    every: Annotated[
        int, typer.Option("--every", min=1, help="a progress line per this many SKUs")
    ] = 500,
    config: ConfigOption = None,
) -> None:
    """Push every SKU (or the ones named) to a channel again.

    For a new channel or after a rule change: each SKU is made due with its current
    figure and pushed through the normal claim path (coalescing, the channel's rate
    limit), with a progress line per --every SKUs and a summary. What fails is retried
    by the propagator as usual."""
    from stockkeeper.bootstrap import channel_adapter
    from stockkeeper.config import ChannelConfig
    from stockkeeper.services.channel_resync import ResyncProgress, resync

    settings = _settings(config)
    chosen = [c for c in settings.connectors_of(ChannelConfig) if c.id == channel]
    if not chosen:
        typer.echo(f"stockkeeper: no channel named {channel}", err=True)
        raise typer.Exit(2)
    cfg = chosen[0]

    def line(p: ResyncProgress) -> str:
        share = 100.0 * p.done / p.total if p.total else 100.0
        return (
            f"{p.channel}: {p.done}/{p.total} SKUs ({share:.1f}%) in {p.elapsed_s:.1f}s: "
            f"{p.pushed} pushed, {p.noop} already shown, {p.unlisted} not listed, "
            f"{p.dead} dead-lettered, {p.retried} to retry"
        )

    async def main() -> int:
        container = await _build(settings, uses=chosen)
        adapter = channel_adapter(cfg, container.metrics)
        try:
            if sys.stdout.isatty():  # a bar with count, rate and ETA; the summary after
                with progress(None, f"resync {channel}", tty=True) as bar:
                    seen = [0]

                    def tick(p: ResyncProgress) -> None:
                        bar.set_total(p.total)
                        bar.advance(p.done - seen[0])
                        seen[0] = p.done

                    done = await resync(
                        container.propagation, adapter, sku, every=every, report=tick
                    )
                typer.echo(line(done))
            else:  # a line per --every SKUs, the last one the summary
                done = await resync(
                    container.propagation,
                    adapter,
                    sku,
                    every=every,
                    report=lambda p: typer.echo(line(p)),
                )
        finally:
            await adapter.aclose()
            await container.close()
        left = done.total - done.done
        if left:
            typer.echo(f"{channel}: {left} SKUs still due (retrying: the propagator finishes them)")
        return 1 if done.dead else 0

    code = _run(main)
    if code:
        raise typer.Exit(code)


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration and say so."""
    from stockkeeper.bootstrap import check_connectors

    settings = _settings(config)
    try:
        check_connectors(settings)  # secrets present, adapters known
    except ConfigError as exc:
        typer.echo(f"stockkeeper: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"configuration is valid ({len(settings.connectors)} connectors)")


@app.command()
def status(
    config: ConfigOption = None,
    url: Annotated[
        str | None, typer.Option(help="The admin-api's URL (default: from api.host/admin_port).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="An admin token (default: from api.tokens or the data directory)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
) -> None:
    """Show the running instance's /admin/status, as tables.

    It asks the running admin-api over HTTP and never starts a database of its own.
    """
    from rich.console import Console

    from stockkeeper.status_report import StatusUnavailable, admin_token, admin_url, fetch_status
    from stockkeeper.status_report import render as render_status

    settings = _settings(config)
    try:
        doc = fetch_status(url or admin_url(settings), token or admin_token(settings))
    except (StatusUnavailable, ConfigError) as exc:
        typer.echo(f"stockkeeper: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    render_status(doc, Console())


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


_METAVARS = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


def _no_type(ctx: Any) -> None:
    return None


def _plain_metavars(command: Any) -> None:
    """Name values the usual way (``--port INTEGER``, ``QUEUE``) instead of the
    ``<int>``/``<list[str]>`` markers Typer puts in help, throughout ``command``."""
    for param in command.params:
        if param.metavar is not None or getattr(param, "is_flag", False):
            continue
        if param.param_type_name == "argument":
            param.metavar = param.name.upper()
            # Its help line is "SERVICE  what it is"; Typer would add "<str>".
            param.display_type_rich = _no_type
            continue
        annotation = param.type_descriptor.annotation
        for arg in (annotation, *typing.get_args(annotation)):
            if arg in _METAVARS:
                param.metavar = _METAVARS[arg]
                break
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


def cli() -> Any:
    """The command tree, with help that reads well."""
    command = typer.main.get_command(app)
    _plain_metavars(command)
    return command


def main() -> None:
    try:
        cli()(prog_name="stockkeeper")
    except KeyboardInterrupt:
        sys.exit(130)
