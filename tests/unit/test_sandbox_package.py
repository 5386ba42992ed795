"""The stand-ins are a package of their own: independent of stockkeeper's code, optional
for the ``stockkeeper sandbox`` commands."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import stockkeeper_sandbox
from stockkeeper.cli_sandbox import SANDBOX_MISSING

SANDBOX = Path(stockkeeper_sandbox.__file__).parent

# Runs the CLI in a fresh interpreter where the sandbox package cannot be imported.
WITHOUT_SANDBOX = """
import sys
sys.modules["stockkeeper_sandbox"] = None
from stockkeeper.cli import main
sys.argv = ["stockkeeper", *sys.argv[1:]]
main()
"""


def _imported(path: Path) -> set[str]:
    """The top-level package of every absolute import in ``path``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_sandbox_imports_nothing_from_stockkeeper() -> None:
    modules = sorted(SANDBOX.glob("**/*.py"))
    assert len(modules) > 5
    offending = [str(p.relative_to(SANDBOX)) for p in modules if "stockkeeper" in _imported(p)]
    assert offending == []


@pytest.mark.parametrize("command", ["wms", "erp", "marketplace", "channels"])
def test_without_the_sandbox_its_commands_say_how_to_install_it(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_SANDBOX, "sandbox", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [SANDBOX_MISSING]
    assert "pip install 'stockkeeper[sandbox]'" in SANDBOX_MISSING
