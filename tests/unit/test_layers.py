"""Dependencies point inwards (docs/architecture.md, "Layers"): each folder of
src/stockkeeper imports only from the layers below it. Read from the source with ``ast``,
so an import inside a function or under ``TYPE_CHECKING`` counts as much as one at the
top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stockkeeper

PACKAGE = Path(stockkeeper.__file__).parent

# layer -> the layers it must never import, and why.
FORBIDDEN: dict[str, tuple[frozenset[str], str]] = {
    "store": (
        frozenset({"messaging", "services", "api", "workers", "connectors"}),
        "PostgreSQL sits below everything that runs on it",
    ),
    "messaging": (
        frozenset({"services", "api", "workers", "connectors"}),
        "the Broker port, its adapters and the consumer runner sit below the use cases "
        "and the loops that use them",
    ),
    "connectors": (
        frozenset({"store", "messaging", "services", "api", "workers"}),
        "a connector turns an outside format into domain records and back; it never touches SQL",
    ),
    "services": (
        frozenset({"api", "workers"}),
        "a use case returns typed results; presentation and loops are built on top",
    ),
}


def layer_of(path: Path) -> str:
    """``domain`` for src/stockkeeper/domain/x.py, ``cli`` for src/stockkeeper/cli.py."""
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def imported_layers(path: Path) -> set[str]:
    """The stockkeeper layers that the module at ``path`` imports from."""
    module = ["stockkeeper", *path.relative_to(PACKAGE).with_suffix("").parts]
    return layers_in(path.read_text(), module)


def layers_in(source: str, module: list[str]) -> set[str]:
    """The stockkeeper layers (``domain``, ``store``, ...) that ``source``, the module
    ``module`` (``["stockkeeper", "store", "stock"]``), imports from, absolutely or
    relatively; ``stockkeeper`` itself (``from stockkeeper import x``) as ``<package>``."""
    here = module[:-1]  # the package the module is in (also for an __init__.py)
    layers: set[str] = set()
    for node in ast.walk(ast.parse(source, ".".join(module))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                names = [".".join([*base, *([node.module] if node.module else [])])]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] != "stockkeeper":
                continue
            layers.add(parts[1] if len(parts) > 1 else "<package>")
    return layers


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_the_layers() -> None:
    layers = {layer_of(p) for p in MODULES}
    assert {"domain", "store", "messaging", "services", "api", "connectors"} <= layers
    assert "domain" in imported_layers(PACKAGE / "store" / "stock.py")


def test_imports_in_functions_and_relative_ones_count() -> None:
    source = (
        "from ..services import unit\n"
        "from . import pool\n"
        "def f():\n"
        "    import stockkeeper.workers.saga\n"
        "    from stockkeeper import __version__\n"
    )
    found = layers_in(source, ["stockkeeper", "messaging", "consumer"])
    assert found == {"services", "messaging", "workers", "<package>"}


def test_domain_imports_no_other_layer() -> None:
    """Pure and synchronous: the rules import nothing but other rules."""
    offending = {
        str(p.relative_to(PACKAGE)): sorted(imported_layers(p) - {"domain"})
        for p in MODULES
        if layer_of(p) == "domain" and imported_layers(p) - {"domain"}
    }
    assert offending == {}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_the_layers_above_it(layer: str) -> None:
    forbidden, why = FORBIDDEN[layer]
    offending = {
        str(p.relative_to(PACKAGE)): sorted(imported_layers(p) & forbidden)
        for p in MODULES
        if layer_of(p) == layer and imported_layers(p) & forbidden
    }
    assert offending == {}, f"{layer}/ must not import {sorted(forbidden)}: {why}"
