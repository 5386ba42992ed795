"""What every ``stockkeeper`` command group shares: the help options, the ``--config``
option, and reading the settings once, loudly (exit 2 naming the key)."""

from __future__ import annotations

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


def settings_from(config: Path | None) -> Settings:
    """The settings of ``config`` (logging and tracing set up from them), or exit 2."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"stockkeeper: {exc}", err=True)
        raise typer.Exit(2) from None
    log = settings.logging
    configure(log.level, log.json_output, access_log=log.access_log)
    tracing.configure(settings.tracing)
    return settings
