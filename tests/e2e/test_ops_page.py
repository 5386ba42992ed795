"""The ops page in a real headless browser: ``stockkeeper up`` on PostgreSQL and
RabbitMQ with the sandbox WMS, driven by Selenium through the machine's Chromium
(Debian packages ``chromium`` and ``chromium-driver``; Selenium is given both paths,
so Selenium Manager never runs and nothing is downloaded).

Log in, find a SKU and see its ledger, replay a dead letter and see it leave the list,
force a WMS sync and watch it reach DONE on the page. A screenshot of the main page is
saved in the test's tmp directory (and where STOCKKEEPER_OPS_SCREENSHOT points, which is
how docs/ops-page.png was made).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stockkeeper.messaging.envelope import ATTEMPT_HEADER, Envelope
from stockkeeper.store import dead_letters
from stockkeeper_sandbox.channel_webhook import WebhookReceiverState
from stockkeeper_sandbox.marketplace import MarketplaceState
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.wms import WmsState
from tests.conftest import CHANNEL_WEBHOOK_SECRET
from tests.e2e.messaging_helpers import wait_until
from tests.e2e.test_wms import Up, wms_config
from tests.support import ADMIN_TOKEN, REQUIRE, ServerProcess

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 120  # how long the browser waits for the page to show a change (never timed)


@pytest.fixture
def browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[Any]:
    """Headless Chromium under Selenium; a skip on a machine without it (a failure in CI)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        msg = (
            f"{CHROMIUM} and {CHROMEDRIVER} are required (apt-get install chromium chromium-driver)"
        )
        if REQUIRE:
            pytest.fail(msg + " in CI")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    # Both paths are given, so Selenium Manager has nothing to find; offline, it could
    # not download a driver even if it ran.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1900",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    with caplog.at_level(logging.DEBUG, logger="selenium.webdriver.common.driver_finder"):
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    # Selenium says when it skips its manager: the driver came from our path.
    assert "Skipping Selenium Manager" in caplog.text
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def up(
    db_url: str,
    rabbit_url: str,
    broker_prefix: str,
    tmp_path: Path,
    wms: tuple[WmsState, SandboxServer],
    market: tuple[MarketplaceState, SandboxServer],
    webhook_channel: tuple[WebhookReceiverState, SandboxServer],
) -> AsyncIterator[Up]:
    """``stockkeeper up`` with a WMS, a polled marketplace and a sales channel."""
    cfg = wms_config(db_url, rabbit_url, broker_prefix, wms[1].url)
    cfg["connectors"] += [
        {"id": "marketplace", "type": "marketplace", "url": market[1].url, "interval_s": 60},
        {
            "id": "webshop",
            "type": "outbound_webhook",
            "url": f"{webhook_channel[1].url}/levels",
            "secret_env": "SK_E2E_CHANNEL_SECRET",
        },
    ]
    env = {"SK_E2E_CHANNEL_SECRET": CHANNEL_WEBHOOK_SECRET}
    server = Up(ServerProcess(cfg, tmp_path, "up", extra_env=env).start(timeout=60))
    try:
        yield server
    finally:
        await server.close()


async def add_dead_letter(db_url: str) -> int:
    env = Envelope.new(
        "inventory.received", {"sku": "TEA-GREEN"}, occurred_at=datetime.now(UTC), sku="TEA-GREEN"
    )
    conn = await asyncpg.connect(db_url)
    try:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        return await dead_letters.record(
            conn,
            queue="wms.outbound",
            message_id=str(env.id),
            routing_key="inventory.received",
            body=env.to_bytes(),
            headers={ATTEMPT_HEADER: 10},
            error="RuntimeError: the WMS said no",
            attempts=10,
        )
    finally:
        await conn.close()


async def fetch(db_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_log_in_find_a_sku_replay_a_dead_letter_and_force_a_sync(
    browser: Any,
    up: Up,
    wms: tuple[WmsState, SandboxServer],
    db_url: str,
    tmp_path: Path,
) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    state, _ = wms
    await up.receive("TEA-GREEN", 10, "r-tea-1")
    state.put("TEA-GREEN", "default", None, 7)  # the WMS counts fewer
    dead_id = await add_dead_letter(db_url)
    wait = WebDriverWait(
        browser, WAIT_S, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )
    ui = up.server.admin_url + "/admin/ui"

    # Log in: the page sends us to the form, the form back to the page.
    browser.get(ui)
    wait.until(lambda d: d.find_element(By.ID, "token"))
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "login").click()
    wait.until(lambda d: d.find_element(By.ID, "outbox"))
    cookie = browser.get_cookie("sk_admin")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"

    # Find the SKU by its prefix and open its ledger.
    box = browser.find_element(By.ID, "sku-prefix")
    box.send_keys("TEA-")
    browser.find_element(By.ID, "sku-search-go").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#sku-results a.sku-link")).click()
    wait.until(lambda d: d.find_element(By.ID, "ledger"))
    assert browser.find_element(By.ID, "sku-name").text == "TEA-GREEN"
    entries = browser.find_elements(By.CSS_SELECTOR, "#ledger tr.ledger-entry")
    assert [e.find_elements(By.TAG_NAME, "td")[1].text for e in entries] == ["RECEIPT"]
    assert "r-tea-1" in entries[0].text

    # Replay the dead letter: it leaves the list.
    browser.get(ui)
    wait.until(lambda d: d.find_element(By.ID, f"replay-{dead_id}")).click()
    wait.until(lambda d: d.find_element(By.ID, "flash"))
    assert "replay done" in browser.find_element(By.ID, "flash").text
    assert not browser.find_elements(By.ID, f"dl-{dead_id}")

    # Force a sync of the SKU; the page's sync table moves it to DONE by itself.
    browser.find_element(By.ID, "sync-sku").send_keys("TEA-GREEN")
    browser.find_element(By.ID, "sync-reason").send_keys("browser test")
    browser.find_element(By.ID, "force-sync-go").click()
    wait.until(lambda d: "WMS sync requested" in d.find_element(By.ID, "flash").text)

    def newest_sync(d: Any) -> Any:
        return d.find_element(By.CSS_SELECTOR, "#sync-table tbody tr")

    assert newest_sync(browser).get_attribute("data-status") in {"PENDING", "IN_PROGRESS", "DONE"}
    wait.until(lambda d: newest_sync(d).get_attribute("data-status") in {"DONE", "FAILED"})
    row = newest_sync(browser)
    assert row.get_attribute("data-status") == "DONE", row.text
    assert "TEA-GREEN" in row.text

    # Poll now: the marketplace's poller takes the request (the page shows it pending
    # until then).
    browser.get(ui)
    wait.until(lambda d: d.find_element(By.ID, "poll-marketplace")).click()
    wait.until(lambda d: "poll requested" in d.find_element(By.ID, "flash").text)

    async def pushed() -> bool:
        rows = await fetch(db_url, "SELECT count(*) AS n FROM channel_push")
        polled = await fetch(db_url, "SELECT count(*) AS n FROM poll_request")
        return bool(rows[0]["n"] >= 1 and polled[0]["n"] == 0)

    await wait_until(pushed, timeout=WAIT_S, what="a push to the channel and the poll taken")

    # The main page, as an operator sees it after all that.
    browser.get(ui)
    wait.until(lambda d: d.find_element(By.ID, "outbox"))
    shot = tmp_path / "ops-page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if target := os.environ.get("STOCKKEEPER_OPS_SCREENSHOT"):
        shutil.copyfile(shot, target)
