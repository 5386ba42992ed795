"""What every part of the configuration shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class Section(BaseModel):
    # A text setting given a plain integer (``prefix: 2026``, a SKU ``12345`` of a rule
    # override) takes it as text: the loader reads only a decimal without a leading
    # zero as an integer, whose text is exactly what was written (D-472).
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


# The name of an environment variable (a secret's home; never the secret).
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
