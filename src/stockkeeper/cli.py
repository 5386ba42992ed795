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
from stockkeeper.cli_common import HELP_OPTIONS, ROOT_CONFIG, ConfigOption
from stockkeeper.cli_common import settings_from as _settings
from stockkeeper.cli_sandbox import sandbox_app
from stockkeeper.config import ConfigError, ConnectorConfig, Settings
from stockkeeper.observability.progress import progress

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container
    from stockkeeper.store.pool import Connections

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
    config: ConfigOption = None,
) -> None:
    """Inventory system of record: reservations that never oversell, and a ledger."""
    # `stockkeeper --config FILE up` as well as `stockkeeper up --config FILE`: the
    # commands read it through settings_from (D-392).
    ROOT_CONFIG.set(config)


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


app.add_typer(sandbox_app, name="sandbox")


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
            # The bar counts every migration in place; say which of them were new.
            typer.echo(f"migrations applied: {names} ({len(available())} in place)")
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
            if not chosen:  # nothing to compare: say so, rather than print nothing
                typer.echo("no channels configured: nothing to reconcile")
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
def check_config(
    file: Annotated[
        Path | None,
        typer.Argument(help="the YAML file to check (or give it with --config)"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Validate the configuration and say so.

    The file is FILE, or the one --config names."""
    from stockkeeper.bootstrap import check_connectors, check_tokens

    if file is not None and config is not None and file != config:
        typer.echo("stockkeeper: give the file once, as FILE or as --config", err=True)
        raise typer.Exit(2)
    settings = _settings(file or config)
    try:
        check_tokens(settings)  # the API's token variables set
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
