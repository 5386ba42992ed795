"""The connection budget: each service's pool fits what it does, and the ten services of
"Running in production" fit a default PostgreSQL (max_connections 100) twice over."""

from __future__ import annotations

from pathlib import Path

from stockkeeper.config import DatabaseConfig, Settings
from stockkeeper.store.budget import ServerRoom
from stockkeeper.store.pool import Connections
from stockkeeper.wiring import CONNECTIONS, SERVICES, connections

PRODUCTION = Settings.model_validate(
    {"database": {"url": "postgresql://db/sk"}, "broker": {"url": "amqp://mq/"}}
)
README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = README.with_name("stockkeeper.example.yaml")


def pool_of(settings: Settings, *names: str) -> int:
    return connections(settings, names).pool_size(settings.database)


def test_every_service_has_a_budget() -> None:
    assert set(CONNECTIONS) == set(SERVICES)


def test_a_consumer_needs_two_not_twenty() -> None:
    assert pool_of(PRODUCTION, "ingest") == 2


def test_the_default_deployment_fits_a_default_postgresql_twice() -> None:
    per_service = {name: pool_of(PRODUCTION, name) for name in SERVICES}
    assert per_service == {
        "inventory-api": 11,
        "admin-api": 4,
        "expiry": 2,
        "dispatcher": 4,
        "wms-sync": 3,
        "wms-outbound": 3,
        "ingest": 2,
        "pollers": 1,
        "propagator": 7,
        "saga": 5,
    }
    total = sum(per_service.values())
    assert total == 42  # was 10 x 20 = 200
    assert 2 * total <= 100 - 3  # two replicas each, superuser_reserved_connections 3
    assert "42 connections" in README.read_text(encoding="utf-8")
    # The example file's comment on database.pool_size gives the same figures.
    example = " ".join(EXAMPLE.read_text(encoding="utf-8").split())
    for name in ("inventory-api", "admin-api", "expiry", "dispatcher", "wms-sync", "ingest"):
        assert f"{name} {per_service[name]}" in example, name
    assert f"hold {total} together" in example


def test_consumers_and_channels_add_to_their_services() -> None:
    s = PRODUCTION.model_copy(
        update={"orders": PRODUCTION.orders.model_copy(update={"consumers": 8})}
    )
    assert pool_of(s, "saga") == 9


def test_the_embedded_queue_adds_one_listen_per_process() -> None:
    embedded = Settings.model_validate({"database": {"url": "postgresql://db/sk"}})
    assert pool_of(embedded, "ingest") == 3
    alone = sum(pool_of(embedded, n) for n in ("ingest", "saga"))
    assert pool_of(embedded, "ingest", "saga") == alone - 2  # one LISTEN, one spare
    assert pool_of(embedded, "inventory-api") == pool_of(PRODUCTION, "inventory-api")


def test_pool_size_overrides_the_budget() -> None:
    need = Connections(work=10, session=2)
    assert need.pool_size(DatabaseConfig(pool_size=4)) == 4
    assert need.pool_size(DatabaseConfig()) == 13


def test_behind_pgbouncer_sessions_get_their_own_pool() -> None:
    cfg = DatabaseConfig(
        url="postgresql://bouncer/sk", pgbouncer=True, direct_url="postgresql://db/sk"
    )
    need = Connections(work=4, session=2)
    assert need.pool_size(cfg) == 5
    assert need.session_pool_size() == 2
    assert Connections(work=4).session_pool_size() == 1  # migrations


def test_server_room() -> None:
    room = ServerRoom(max_connections=100, reserved=3, in_use=90)
    assert room.free == 7
    assert room.short_by(7) == 0
    assert room.short_by(11) == 4
    assert ServerRoom(100, 3, 120).free == 0
