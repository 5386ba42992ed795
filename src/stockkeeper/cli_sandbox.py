"""``stockkeeper sandbox ...``: the stand-ins for the systems around stockkeeper (the
``stockkeeper_sandbox`` package, extra ``[sandbox]``), and the ``connectors:`` snippets
they print. Registered on the main CLI by :mod:`stockkeeper.cli`."""

from __future__ import annotations

import secrets
import time
from typing import Annotated

import typer

from stockkeeper.cli_common import HELP_OPTIONS, ConfigOption, settings_from
from stockkeeper.config import ConfigError

sandbox_app = typer.Typer(
    help="Stand-ins for the systems around stockkeeper.\n\n"
    "A WMS, an ERP database, a marketplace and sales channels speaking their owners' "
    "wire formats, for trials and tests. Each prints the connectors: entries to paste "
    "into stockkeeper.yaml; their control routes are in docs/sandboxes.md.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)
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
            admin_url, embedded = database_url(settings_from(config), create=False)
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
    shopify_location: Annotated[
        list[str] | None,
        typer.Option(
            help="a location of the sandbox shop, gid://shopify/Location/<n> (repeatable; "
            "default: gid://shopify/Location/1 alone)"
        ),
    ] = None,
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
        bucket_size=shopify_bucket,
        restore_rate=shopify_restore_rate,
        unlisted=keep,
        location_ids=shopify_location or (),
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
