"""Reading the configuration: one YAML file, overridden by STOCKKEEPER_SECTION__KEY
variables, validated into :class:`~stockkeeper.config.settings.Settings`.

A variable's value is YAML, but a text setting takes the text as written; a number
segment names an entry of a list of the file; a variable a ``*_env`` key names is a
secret's home, not a setting (D-428).

Re-exported by :mod:`stockkeeper.config`; import it from there.
"""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

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


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the
    last silently, so a second ``api:`` section would drop the first one's keys.

    And reading plain scalars as YAML 1.2 does, not 1.1 (D-472): PyYAML's 1.1 rules
    read ``on``/``off``/``yes``/``no`` (and ``NO``, Norway) as booleans, ``010`` as
    octal 8, ``1_000`` as 1000, ``12:30`` as 750 and ``2026-01-01`` as a date, so a
    SKU, a token or a country code changed type or value before it was validated. Here
    only ``true``/``false`` are booleans and only a plain decimal without a leading
    zero (``0``, ``42``, ``-7``) is an integer, so its text is exactly what was
    written; everything else stays the text as written, and each setting reads it
    for its type (an integer setting takes ``010`` as 10 and ``1_000`` as 1000, a
    yes/no setting ``on``/``off``/``yes``/``no``, a number of seconds ``2.5``; a text
    setting takes it as it is: ``0123``, ``no``, ``12:30``).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_YAML11_ONLY = {_BOOL, _INT, "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictLoader.add_implicit_resolver(_INT, re.compile(r"^(?:0|-?[1-9][0-9]*)$"), list("-0123456789"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader


def _choices(annotation: Any) -> list[Any]:
    """The types a field accepts: Optional, unions and Annotated unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _choices(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in typing.get_args(annotation) for t in _choices(arg)]
    return [annotation]


def _takes_text(path: list[str]) -> bool:
    """Whether the setting at ``path`` is text (a URL, a host, a name, a path), so a
    variable's value is that text as written, whatever it would read as in YAML."""
    kinds: list[Any] = [Settings]
    for part in path:
        found: list[Any] = []
        for kind in kinds:
            if part.isdigit() and typing.get_origin(kind) is list:
                found += _choices(typing.get_args(kind)[0])
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                for name, info in kind.model_fields.items():
                    if part in (name, info.alias):
                        found += _choices(info.annotation)
        kinds = found
    return any(kind in (str, Path) for kind in kinds)


YAML_NULLS = {"null", "Null", "NULL", "~"}


def _env_value(name: str, path: list[str], raw: str) -> Any:
    """A variable's value: YAML (a scalar, or a flow list or mapping) like the file's,
    except that a text setting takes the text as written ("::" for api.host, "2026" for
    broker.prefix, a "#" in a URL) unless it is quoted or null."""
    if raw == "":
        return None
    if _takes_text(path) and not raw.lstrip().startswith(("'", '"')):
        return None if raw.strip() in YAML_NULLS else raw
    try:
        return _yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not a valid value: {exc}") from exc


def _env_names(node: Any) -> set[str]:
    """The variables a configuration names as the home of a secret (token_env,
    secret_env, dsn_env, ...): their values are secrets, not settings."""
    if isinstance(node, dict):
        found = {v for k, v in node.items() if str(k).endswith("_env") and isinstance(v, str)}
        return found.union(*(_env_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_names(v) for v in node))
    return set()


def _secret_homes(data: dict[str, Any], environ: dict[str, str]) -> set[str]:
    """The variables the file or a STOCKKEEPER_ variable names with a ``*_env`` key."""
    names = _env_names(data)
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX) and name not in NOT_SETTINGS:
            if name.endswith("_ENV"):  # STOCKKEEPER_CONNECTORS__0__TOKEN_ENV=...
                names.add(raw.strip())
            try:
                names |= _env_names(_yaml(raw))
            except yaml.YAMLError:
                continue
    return names


def _env_overrides(environ: dict[str, str], skip: set[str] | None = None) -> dict[str, Any]:
    """STOCKKEEPER_API__INVENTORY_PORT=9000 -> {"api": {"inventory_port": 9000}}.

    Values are read as YAML scalars, so numbers, booleans and lists work as in the file;
    a number segment names an entry of a list (STOCKKEEPER_CONNECTORS__0__URL). Variables
    in ``skip`` (the homes of secrets the configuration names) are not settings.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS or name in (skip or ()):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: empty key segment")
        value = _env_value(name, path, raw)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: conflicts with another variable")
            node = child
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any], at: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        here = f"{at}{key}"
        numbered = isinstance(value, dict) and value and all(k.isdigit() for k in value)
        if numbered and not isinstance(out.get(key), dict):
            out[key] = _merge_entries(out.get(key), value, here)
        elif isinstance(value, dict):
            found = out.get(key)
            out[key] = _merge(found if isinstance(found, dict) else {}, value, here + ".")
        else:
            out[key] = value
    return out


def _merge_entries(base: Any, over: dict[str, Any], at: str) -> list[Any]:
    """Variables naming entries of a list by number change those entries of the file's
    list; an entry the file does not have cannot be made one key at a time."""
    entries = list(base) if isinstance(base, list) else []
    for index, value in over.items():
        i = int(index)
        if i >= len(entries):
            var = ENV_PREFIX + "__".join([*at.upper().split("."), index])
            raise ConfigError(
                f"{var}__*: {at} has no entry {i} to change (it has {len(entries)}); "
                f"give the whole list as {ENV_PREFIX}{at.upper().replace('.', '__')}"
            )
        if isinstance(value, dict) and isinstance(entries[i], dict):
            entries[i] = _merge(entries[i], value, f"{at}.{index}.")
        else:
            entries[i] = value
    return entries


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        # A connector's type tag is not a key the user wrote: connectors.0.url, not
        # connectors.0.wms.url.
        loc = [p for i, p in enumerate(err["loc"]) if not (i == 2 and p in CONNECTOR_TYPES)]
        # A mapping's key that is refused (a SKU of rules.skus): the mapping, "(a key)".
        named = loc[:-2] if loc[-1:] == ["[key]"] else loc
        key = ".".join(str(p) for p in named) or "(top level)"
        if named is not loc:
            key += " (a key)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        msg = err["msg"]
        if err["type"] == "value_error":  # our own rule's message, without pydantic's prefix
            msg = msg.removeprefix("Value error, ")
        elif err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "string_type" and isinstance(got, bool):
            # Only true/false read as booleans (D-472); a text setting given one is
            # refused, never taken as "True".
            msg = (
                f"YAML reads {str(got).lower()} as a yes/no value, not text: write it in "
                f"quotes ('{str(got).lower()}') if it is the text"
            )
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
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file} cannot be read: {exc}") from None
        try:
            loaded = _yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections")
        data = loaded or {}
        origin = str(file)
    elif explicit:
        raise ConfigError(f"config file {file} does not exist")
    overrides = _env_overrides(env, skip=_secret_homes(data, env))
    if overrides:
        origin += " + environment"
    try:
        return Settings.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
