"""What every ``stockkeeper`` command group shares: the help options, the ``--config``
option, reading the settings once, loudly (exit 2 naming the key), building the
container and running a command's coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from stockkeeper.config import ConfigError, ConnectorConfig, Settings, load_settings
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import configure

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container
    from stockkeeper.store.pool import Connections

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file (default: $STOCKKEEPER_CONFIG or ./stockkeeper.yaml if it exists).",
    ),
]


# The file given before the command (`stockkeeper --config FILE up`), set by the root
# callback for the one command this process runs.
ROOT_CONFIG: ContextVar[Path | None] = ContextVar("root_config", default=None)


def settings_from(config: Path | None) -> Settings:
    """The settings of ``config`` (logging and tracing set up from them), or exit 2.

    Without one, the file given to ``stockkeeper --config FILE`` before the command
    (D-392), then ``$STOCKKEEPER_CONFIG``, then ``./stockkeeper.yaml``.
    """
    if config is None:
        config = ROOT_CONFIG.get()
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"stockkeeper: {exc}", err=True)
        raise typer.Exit(2) from None
    log = settings.logging
    configure(log.level, log.json_output, access_log=log.access_log)
    tracing.configure(settings.tracing)
    return settings


T = TypeVar("T")

UNREACHABLE_AT_START = 3
"""The exit status of a process that cannot reach its database or broker at start
(D-435); a configuration that is wrong (a database that does not exist, a refused
password) is 2, as every other invalid setting."""


def _host_port(url: str | None, default_port: int) -> str:
    """``host:port`` of ``url``, without credentials."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url or "")
        return f"{parts.hostname or 'localhost'}:{parts.port or default_port}"
    except ValueError:
        return "?"


def unreachable(settings: Settings, exc: BaseException) -> str | None:
    """What to say when ``exc`` (raised at start) is a database or broker that cannot
    be reached; None for any other error."""
    from stockkeeper.messaging.broker import BrokerUnavailable
    from stockkeeper.store.errors import cannot_connect

    restart = (
        f"exiting with status {UNREACHABLE_AT_START}; start it again once it answers "
        "(a supervisor's restart policy does: deploy/compose.yaml, D-435)"
    )
    if isinstance(exc, BrokerUnavailable):
        where = _host_port(settings.broker.url, 5672)
        return f"cannot reach RabbitMQ at {where} (broker.url) at start: {exc}; {restart}"
    if cannot_connect(exc):
        url = settings.database.url
        where = _host_port(url, 5432) if url else "the embedded server"
        cause = exc.__cause__ if isinstance(exc, ConfigError) and exc.__cause__ else exc
        return (
            f"cannot reach PostgreSQL at {where} (database.url) at start: "
            f"{type(cause).__name__}: {cause}; {restart}"
        )
    return None


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's coroutine to its end, on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    result: T = uvloop.run(main())
    return result


async def build_container(
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
        # A server that does not answer is exit 3, a setting that is wrong exit 2.
        message = unreachable(settings, exc)
        typer.echo(f"stockkeeper: {message or exc}", err=True)
        raise typer.Exit(UNREACHABLE_AT_START if message else 2) from None
