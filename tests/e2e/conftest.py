"""End-to-end fixtures: a database shared by one module's server, and a warning filter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import scratch_database

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
async def module_db_url(admin_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh migrated database for a whole module (one server serves all its tests)."""
    async with scratch_database(admin_url, "sk_e2e", template_db) as url:
        yield url
