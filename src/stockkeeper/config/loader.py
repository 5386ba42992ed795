"""Reading the configuration: one YAML file, overridden by STOCKKEEPER_SECTION__KEY
variables, validated into :class:`~stockkeeper.config.settings.Settings`.

Re-exported by :mod:`stockkeeper.config`; import it from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stockkeeper.config.base import ConfigError
from stockkeeper.config.connectors import CONNECTOR_TYPES
from stockkeeper.config.settings import Settings

ENV_PREFIX = "STOCKKEEPER_"
CONFIG_ENV = "STOCKKEEPER_CONFIG"
DEFAULT_CONFIG_FILE = "stockkeeper.yaml"
# Variables with our prefix that are not settings.
NOT_SETTINGS = {
    CONFIG_ENV,
    "STOCKKEEPER_TEST_DATABASE_URL",
    "STOCKKEEPER_REQUIRE_SERVICES",
    "STOCKKEEPER_TEST_BROKER_URL",
    "STOCKKEEPER_FAILPOINTS",
}


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """STOCKKEEPER_API__INVENTORY_PORT=9000 -> {"api": {"inventory_port": 9000}}.

    Values are read as YAML scalars, so numbers, booleans and lists work as in the file.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: empty key segment")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not a valid value: {exc}") from exc
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: conflicts with another variable")
            node = child
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        # A connector's type tag is not a key the user wrote: connectors.0.url, not
        # connectors.0.wms.url.
        loc = [p for i, p in enumerate(err["loc"]) if not (i == 2 and p in CONNECTOR_TYPES)]
        key = ".".join(str(p) for p in loc) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the YAML file (if any) and the environment, validate, and return Settings."""
    env = dict(os.environ if environ is None else environ)
    explicit = path is not None or CONFIG_ENV in env
    file = Path(path if path is not None else env.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
    data: dict[str, Any] = {}
    origin = "defaults"
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections")
        data = loaded or {}
        origin = str(file)
    elif explicit:
        raise ConfigError(f"config file {file} does not exist")
    overrides = _env_overrides(env)
    if overrides:
        origin += " + environment"
    try:
        return Settings.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
