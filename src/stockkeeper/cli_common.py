"""What every ``stockkeeper`` command group shares: the help options, the ``--config``
option, and reading the settings once, loudly (exit 2 naming the key)."""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

import typer

from stockkeeper.config import ConfigError, Settings, load_settings
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import configure

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
