"""The ``stockkeeper`` command."""

from __future__ import annotations

import contextlib
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from stockkeeper import __version__, cli_db
from stockkeeper.cli_common import (
    HELP_OPTIONS,
    ROOT_CONFIG,
    UNREACHABLE_AT_START,
    ConfigOption,
    unreachable,
)
from stockkeeper.cli_common import build_container as _build
from stockkeeper.cli_common import run_async as _run
from stockkeeper.cli_common import settings_from as _settings
from stockkeeper.cli_sandbox import sandbox_app
from stockkeeper.config import ConfigError, Settings

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
            if consumers or USES_BROKER.intersection(services):
                # At start, before anything runs: a broker we cannot reach stops here.
                await container.connected_broker()
            await serve(container, services, consumers or [])
        finally:
            await container.close()

    try:
        _run(main)
    except TopologyMismatch as exc:  # an operator's decision (D-160): say it, no traceback
        typer.echo(f"stockkeeper: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:
        # Only the start gets here (the runner turns a failure while running into its
        # own exit): a database or broker we cannot reach is one line, exit 3 (D-435).
        message = unreachable(settings, exc)
        if message is None:
            raise
        typer.echo(f"stockkeeper: {message}", err=True)
        raise typer.Exit(UNREACHABLE_AT_START) from None


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
    import inspect

    from stockkeeper.messaging.topology import QUEUES
    from stockkeeper.wiring import ConsumerSpec

    settings = _settings(config)
    # On the embedded queue nothing but the topology routes messages: a queue outside it
    # would consume nothing, ever. On RabbitMQ it may be one bound by the operator
    # (D-454), so it is taken (D-469).
    names = [spec.name for spec in QUEUES]
    if settings.broker.url is None and queue not in names:
        typer.echo(
            f"stockkeeper: unknown queue {queue!r}; the embedded queue (no broker.url) "
            f"routes only to: {', '.join(names)}",
            err=True,
        )
        raise typer.Exit(2)
    module_name, _, attr = handler.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        typer.echo(f"stockkeeper: cannot load handler {handler!r}: {exc}", err=True)
        raise typer.Exit(2) from None
    if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)):
        typer.echo(
            f"stockkeeper: handler {handler!r} is not an async function: "
            "it must be async def handler(conn, envelope) -> None",
            err=True,
        )
        raise typer.Exit(2)
    spec = ConsumerSpec(name or handler, queue, fn, drop_stale)
    _serve(settings, [], [spec])


app.add_typer(sandbox_app, name="sandbox")

# The commands on the database and the channels (cli_db), where the listing shows them.
app.command()(cli_db.migrate)
app.command()(cli_db.audit)
app.command("reconcile-channels")(cli_db.reconcile_channels)
app.add_typer(cli_db.channels_app, name="channels")


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
    n = len(settings.connectors)
    typer.echo(
        f"configuration is valid ({_checked_source(file or config)}: "
        f"{n} connector{'' if n == 1 else 's'})"
    )


def _checked_source(path: Path | None) -> str:
    """What check-config read: the file, or, with none there, only the defaults and the
    environment (a newcomer in the wrong directory is told so, not just "valid")."""
    import os

    from stockkeeper.config.loader import CONFIG_ENV, DEFAULT_CONFIG_FILE

    if path is None:
        path = ROOT_CONFIG.get()  # stockkeeper --config FILE check-config (D-392)
    file = Path(path if path is not None else os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
    if file.exists():
        return str(file)
    return f"no {file} here, so the defaults and STOCKKEEPER_* variables"


@app.command()
def status(
    config: ConfigOption = None,
    url: Annotated[
        str | None,
        typer.Option(help="the admin-api's URL (default: from api.host and api.admin_port)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="an admin token (default: from api.tokens, else the generated one)"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the JSON document, not tables")
    ] = False,
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
