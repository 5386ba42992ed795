"""Amazon in bulk through the Feeds API: a due backlog that reaches ``feed_threshold``
goes as one JSON_LISTINGS_FEED, settled SKU by SKU from the processing report; every
request and document checked against Amazon's own models (``tests/specs/amazon``)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from jsonschema import Draft4Validator, Draft7Validator

from stockkeeper.bootstrap import Container, build, channel_adapter
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.connectors.amazon import AmazonChannel
from stockkeeper.connectors.channels import Push
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.amazon import AmazonState, PatchRequest
from tests.conftest import FakeClock
from tests.integration.test_amazon import (
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH,
    SPECS,
    Amazon,
    Recorder,
    amazon_cfg,
    credentials,
    feeds_sandbox,
)
from tests.integration.test_propagation import record_all, sync_all

FEEDS = "/feeds/2021-06-30"
FAST = {"feed_poll_s": 0.01, "feed_timeout_s": 30}


@pytest.fixture
def amazon() -> Iterator[Amazon]:
    with feeds_sandbox() as sandbox:
        yield sandbox


def list_as(state: AmazonState, sku: str, product_type: str) -> None:
    """The seller listed ``sku`` as ``product_type`` (our pushes name another: refused)."""
    patch = {
        "op": "merge",
        "path": "/attributes/fulfillment_availability",
        "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": 0}],
    }
    state.patch(sku, PatchRequest.model_validate({"productType": product_type, "patches": [patch]}))


def feeds_validator(definition: str) -> Draft4Validator:
    spec = json.loads((SPECS / "feeds_2021-06-30.json").read_text())
    return Draft4Validator(
        {"$ref": f"#/definitions/{definition}", "definitions": spec["definitions"]}
    )


def schema(name: str) -> Draft7Validator:
    return Draft7Validator(json.loads((SPECS / name).read_text()))


def calls(recorder: Recorder) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _, _ in recorder.requests if p != "/auth/o2/token"]


@pytest.fixture
async def adapter(amazon: Amazon) -> AsyncIterator[AmazonChannel]:
    _, server, _ = amazon
    a = AmazonChannel(amazon_cfg(server, feed_threshold=2, **FAST), lwa=credentials(server))
    yield a
    await a.aclose()


async def test_a_feed_fits_the_models_and_settles_each_sku_from_the_report(
    adapter: AmazonChannel, amazon: Amazon
) -> None:
    state, _, recorder = amazon
    state.gzip_reports = True  # the adapter reads a compressed report too
    state.unlist_skus(["GONE"])
    list_as(state, "SHOE-1", "SHOES")
    items = [Push("SKU/1 blue", 5, 1), Push("GONE", 1, 1), Push("SHOE-1", 2, 1), Push("B", 0, 3)]
    outcomes = {o.sku: o for o in await adapter.push(items)}
    assert {s: o.status for s, o in outcomes.items()} == {
        "SKU/1 blue": "ok",
        "GONE": "unlisted",
        "SHOE-1": "rejected",
        "B": "ok",
    }
    assert "PRODUCT_TYPE_MISMATCH" in (outcomes["SHOE-1"].error or "")
    assert state.levels() == {"SKU/1 blue": 5, "B": 0, "SHOE-1": 0}
    assert state.counters()["feeds"] == 1
    seen = calls(recorder)
    assert not [c for c in seen if c[0] == "PATCH"]  # one feed, no PATCH per SKU
    assert [m for m, p in seen if "/listings/" in p] == ["GET", "GET"]  # the two refused
    document, created, report_seen = None, None, False
    for method, path, _, body in recorder.requests:
        if (method, path) == ("POST", f"{FEEDS}/documents"):
            assert not list(
                feeds_validator("CreateFeedDocumentSpecification").iter_errors(json.loads(body))
            )
            assert json.loads(body)["contentType"] == "application/json; charset=UTF-8"
        elif method == "PUT" and path.startswith("/_sandbox/uploads/"):
            document = json.loads(body)
        elif (method, path) == ("POST", f"{FEEDS}/feeds"):
            created = json.loads(body)
        elif method == "GET" and path.startswith("/_sandbox/downloads/"):
            report_seen = True
    assert document is not None
    assert created is not None
    assert report_seen
    errors = list(schema("listings-feed-schema-v2.json").iter_errors(document))
    assert not errors, errors
    assert [m["sku"] for m in document["messages"]] == [i.sku for i in items]
    assert not list(feeds_validator("CreateFeedSpecification").iter_errors(created))
    assert created["feedType"] == "JSON_LISTINGS_FEED"
    # The sandbox's answers fit the models too (a sandbox can share our misreading).
    [feed] = state.feeds()
    shown = state.feed(feed.feed_id)
    assert not list(feeds_validator("Feed").iter_errors(shown))
    assert shown is not None
    assert shown["processingStatus"] == "DONE"
    report = json.loads(gzip.decompress(state.report(shown["resultFeedDocumentId"]) or b""))
    assert report["summary"]["messagesInvalid"] == 2


async def test_the_processing_report_fits_its_schema(
    adapter: AmazonChannel, amazon: Amazon
) -> None:
    state, _, _ = amazon
    state.unlist_skus(["GONE"])
    list_as(state, "SHOE-1", "SHOES")
    await adapter.push([Push("A", 1, 1), Push("GONE", 1, 1), Push("SHOE-1", 2, 1)])
    [feed] = state.feeds()
    assert feed.result_id is not None
    report = json.loads(state.report(feed.result_id) or b"")
    errors = list(schema("listings-feed-processing-report-schema-v2.json").iter_errors(report))
    assert not errors, errors
    assert report["summary"]["messagesProcessed"] == 3
    assert report["summary"]["messagesAccepted"] == 1
    assert {(i["messageId"], i["sku"]) for i in report["issues"]} == {(2, "GONE"), (3, "SHOE-1")}


# -- through the propagator ------------------------------------------------------------


@pytest.fixture
async def rig(
    config: dict[str, Any],
    clock: FakeClock,
    amazon: Amazon,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Container, Propagator]]:
    _, server, _ = amazon
    monkeypatch.setenv("AMZ_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AMZ_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AMZ_REFRESH_TOKEN", REFRESH)
    cfg = amazon_cfg(server, feed_threshold=3, **FAST)
    config["connectors"] = [cfg.model_dump(mode="json", exclude_none=True)]
    config.setdefault("propagation", {}).update({"backoff_base_ms": 1, "backoff_max_ms": 5})
    c: Container = await build(Settings.model_validate(config), clock=clock)
    [channel] = c.settings.connectors_of(ChannelConfig)
    adapter = channel_adapter(channel, c.metrics)
    try:
        yield c, Propagator(c.propagation, {channel.id: adapter}, c.pool)
    finally:
        await adapter.aclose()
        await c.close()


async def states(c: Container) -> dict[str, tuple[str, int | None, int]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT sku, status, pushed_quantity, desired_quantity FROM channel_sync_state "
            "WHERE channel = 'amazon-eu'"
        )
    return {r["sku"]: (r["status"], r["pushed_quantity"], r["desired_quantity"]) for r in rows}


async def receive(c: Container, levels: dict[str, int]) -> None:
    for sku, qty in levels.items():
        await c.stock.receive(Receipt(sku, qty, f"r-{sku}-{qty}"))


async def test_a_backlog_at_the_threshold_goes_as_one_feed_and_a_rejected_sku_is_a_dead_letter(
    rig: tuple[Container, Propagator], amazon: Amazon
) -> None:
    c, worker = rig
    state, _, recorder = amazon
    list_as(state, "SHOE-1", "SHOES")
    await receive(c, {"A": 4, "B": 5, "C": 6, "SHOE-1": 7})
    await sync_all(c, worker)
    assert state.counters()["feeds"] == 1
    assert not [p for m, p in calls(recorder) if m == "PATCH"]
    assert {s: v[0] for s, v in (await states(c)).items()} == {
        "A": "SYNCED",
        "B": "SYNCED",
        "C": "SYNCED",
        "SHOE-1": "DEAD",
    }
    assert state.levels() == {"A": 4, "B": 5, "C": 6, "SHOE-1": 0}
    async with c.pool.acquire() as conn:
        error = await conn.fetchval(
            "SELECT error FROM dead_letter WHERE queue = 'channel.propagation'"
        )
    assert "PRODUCT_TYPE_MISMATCH" in error


async def test_a_fatal_feed_is_retried_and_then_succeeds(
    rig: tuple[Container, Propagator], amazon: Amazon
) -> None:
    c, worker = rig
    state, _, _ = amazon
    state.fail_next_feeds(1)
    await receive(c, {"A": 1, "B": 2, "C": 3})
    await record_all(c, worker)
    assert await worker.push_once("amazon-eu") == 3
    assert state.counters()["feeds_fatal"] == 1
    assert state.levels() == {}
    assert {v[0] for v in (await states(c)).values()} == {"PENDING"}
    # Due again once its (millisecond) backoff has passed: the whole batch, as a feed.
    while await c.propagation.due_count("amazon-eu", 3) < 3:
        await asyncio.sleep(0.005)
    while await worker.push_once("amazon-eu"):
        pass
    assert state.counters()["feeds"] == 2
    assert state.levels() == {"A": 1, "B": 2, "C": 3}
    feeds = c.metrics.channel_feeds
    assert feeds.labels(channel="amazon-eu", result="fatal")._value.get() == 1
    assert feeds.labels(channel="amazon-eu", result="done")._value.get() == 1
    assert {v[0] for v in (await states(c)).values()} == {"SYNCED"}


async def test_a_sku_changed_while_its_feed_was_processing_is_pushed_again(
    rig: tuple[Container, Propagator], amazon: Amazon
) -> None:
    c, worker = rig
    state, _, recorder = amazon
    state.feed_delay_s = 3600.0  # processed when the test says so
    await receive(c, {"A": 1, "B": 2, "C": 3})
    await record_all(c, worker)
    pushing = asyncio.ensure_future(worker.push_once("amazon-eu"))
    while not state.feeds():
        await asyncio.sleep(0.005)
    await receive(c, {"B": 10})  # B is now 12, while the feed (B at 2) is processing
    await record_all(c, worker)
    for feed in state.feeds():
        feed.due = 0.0
    assert await pushing == 3
    after = await states(c)
    assert after["A"][0] == after["C"][0] == "SYNCED"
    assert after["B"] == ("PENDING", 2, 12)  # acknowledged at the version the feed carried
    while await worker.push_once("amazon-eu"):
        pass
    assert state.levels() == {"A": 1, "B": 12, "C": 3}
    # One SKU due is below the threshold: a plain PATCH.
    assert [p.rsplit("/", 1)[-1] for m, p in calls(recorder) if m == "PATCH"] == ["B"]
    assert state.counters()["feeds"] == 1


async def test_below_the_threshold_pushes_stay_patches(
    rig: tuple[Container, Propagator], amazon: Amazon
) -> None:
    c, worker = rig
    state, _, recorder = amazon
    await receive(c, {"A": 1, "B": 2})
    await sync_all(c, worker)
    assert state.levels() == {"A": 1, "B": 2}
    assert sorted(p.rsplit("/", 1)[-1] for m, p in calls(recorder) if m == "PATCH") == ["A", "B"]
    assert state.counters().get("feeds", 0) == 0
    assert not [p for _, p in calls(recorder) if p.startswith(FEEDS)]


async def test_each_poll_renews_the_claim_and_a_sku_no_longer_held_is_superseded(
    adapter: AmazonChannel, amazon: Amazon
) -> None:
    state, _, _ = amazon
    state.feed_delay_s = 3600.0
    fenced: list[list[str]] = []

    async def fence(skus: Sequence[str]) -> set[str]:
        fenced.append(list(skus))
        if len(fenced) == 2:  # B's lease ran out and another sender claimed it
            for feed in state.feeds():
                feed.due = 0.0
            return {"A"}
        return set(skus)

    outcomes = await adapter.push([Push("A", 1, 1), Push("B", 2, 1)], fence)
    assert [(o.sku, o.status) for o in outcomes] == [("A", "ok"), ("B", "superseded")]
    assert fenced == [["A", "B"], ["A", "B"]]


async def test_a_feed_is_claimed_for_longer_than_its_timeout(
    rig: tuple[Container, Propagator],
) -> None:
    c, worker = rig
    await receive(c, {"A": 1, "B": 2, "C": 3, "D": 4})
    await record_all(c, worker)
    feed = await c.propagation.claim_feed(worker.adapters["amazon-eu"])
    assert feed is not None
    claimed, lease_s = feed
    assert len(claimed) == 4
    assert lease_s > 30  # feed_timeout_s
    async with c.pool.acquire() as conn:
        shortest = await conn.fetchval(
            "SELECT min(extract(epoch FROM leased_until - now())) FROM channel_sync_state "
            "WHERE channel = 'amazon-eu'"
        )
    assert shortest > 30
    assert await c.propagation.due_count("amazon-eu", 3) == 0


def test_feed_config_bounds(amazon: Amazon) -> None:
    _, server, _ = amazon
    assert amazon_cfg(server).feed_threshold == 0  # feeds are off unless asked for
    with pytest.raises(ValueError, match="less than or equal to 25000"):
        amazon_cfg(server, feed_max_skus=25_001)
    with pytest.raises(ValueError, match="shorter than feed_timeout_s"):
        amazon_cfg(server, feed_poll_s=60, feed_timeout_s=60)


async def test_the_sandbox_feed_answers_fit_the_feeds_model(
    adapter: AmazonChannel, amazon: Amazon
) -> None:
    _, server, _ = amazon
    assert adapter.tokens is not None
    headers = {"x-amz-access-token": await adapter.tokens.token()}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        made = await client.post(f"{FEEDS}/documents", json={"contentType": "application/json"})
        assert made.status_code == 201
        assert not list(feeds_validator("CreateFeedDocumentResponse").iter_errors(made.json()))
        document = adapter.feed_document([Push("A", 3, 1), Push("B", 4, 1)])
        uploaded = await client.put(made.json()["url"], json=document)
        assert uploaded.status_code == 200
        spec = {
            "feedType": "JSON_LISTINGS_FEED",
            "marketplaceIds": ["A1PA6795UKMFR9"],
            "inputFeedDocumentId": made.json()["feedDocumentId"],
        }
        created = await client.post(f"{FEEDS}/feeds", json=spec)
        assert created.status_code == 202
        assert not list(feeds_validator("CreateFeedResponse").iter_errors(created.json()))
        feed = await client.get(f"{FEEDS}/feeds/{created.json()['feedId']}")
        assert not list(feeds_validator("Feed").iter_errors(feed.json()))
        where = await client.get(f"{FEEDS}/documents/{feed.json()['resultFeedDocumentId']}")
        assert not list(feeds_validator("FeedDocument").iter_errors(where.json()))
        report = await client.get(where.json()["url"])
    errors = list(
        schema("listings-feed-processing-report-schema-v2.json").iter_errors(report.json())
    )
    assert not errors, errors
    assert report.json()["summary"]["messagesAccepted"] == 2


async def test_the_running_propagator_sends_a_backlog_as_one_feed(
    rig: tuple[Container, Propagator], amazon: Amazon
) -> None:
    c, worker = rig
    state, _, recorder = amazon
    await receive(c, {f"R-{i}": i + 1 for i in range(5)})
    await record_all(c, worker)
    stop = asyncio.Event()
    running = asyncio.ensure_future(worker.run(stop))
    try:
        while (await c.propagation.status())["amazon-eu"].pending:
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await running
    assert state.levels() == {f"R-{i}": i + 1 for i in range(5)}
    assert state.counters()["feeds"] == 1
    assert not [p for m, p in calls(recorder) if m == "PATCH"]
