"""The Dockerfile and deploy/compose.yaml, read as files (no container engine here):
the image is multi-stage, runs as a non-root user and checks /readyz; compose runs
PostgreSQL, RabbitMQ and every service of the runner, each with a small pool whose sum
the file states, and every setting it passes is one stockkeeper accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockkeeper.config import load_settings
from stockkeeper.wiring import SERVICES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return out


def final_stage(parsed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(parsed) if k == "FROM")
    return parsed[last_from:]


def dockerfile_env(parsed: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in final_stage(parsed):
        if keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def test_the_image_is_built_in_stages_and_runs_from_a_slim_base() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    froms = [args for k, args in parsed if k == "FROM"]
    assert len(froms) >= 2, "build and runtime stages"
    stages = [f.split()[-1] for f in froms if " AS " in f.upper()]
    assert stages, "named stages"
    copies = [args for k, args in final_stage(parsed) if k == "COPY"]
    assert any(c.startswith(f"--from={stages[0]}") for c in copies), "runtime copies the build"
    assert all("slim" in f for f in froms), "every stage on a slim base"
    assert not any("alpine" in f for f in froms), "the embedded PostgreSQL wheel needs glibc"


def test_the_image_runs_as_a_user_who_is_not_root() -> None:
    users = [args for k, args in final_stage(instructions(DOCKERFILE.read_text())) if k == "USER"]
    assert users, "the runtime stage names a USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_the_health_check_asks_readyz() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    checks = [args for k, args in final_stage(parsed) if k == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "CMD" in checks[0]
    assert "HEALTHCHECK_URL" in checks[0]
    assert dockerfile_env(parsed)["HEALTHCHECK_URL"] == "http://127.0.0.1:8080/readyz"
    # With no arguments the image runs `stockkeeper up`: the embedded defaults.
    assert yaml.safe_load(next(a for k, a in final_stage(parsed) if k == "CMD")) == ["up"]


def test_the_image_defaults_are_settings_stockkeeper_accepts(tmp_path: Path) -> None:
    env = dockerfile_env(instructions(DOCKERFILE.read_text()))
    env.pop("PATH")
    empty = tmp_path / "stockkeeper.yaml"
    empty.write_text("")
    settings = load_settings(empty, environ=env)
    assert settings.api.host == "0.0.0.0"  # noqa: S104 - inside a container, on purpose
    assert settings.database.url is None, "the image's default is the embedded PostgreSQL"


# -- deploy/compose.yaml -------------------------------------------------------------------

VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, as compose does them."""
    return VARIABLE.sub(lambda m: environ.get(m[1]) or (m[2] or ""), value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # `<<` merges are YAML's
    return loaded


def stockkeeper_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("image", "").startswith("stockkeeper")
    }


def test_every_service_of_the_runner_is_its_own_container(compose: dict[str, Any]) -> None:
    ours = stockkeeper_services(compose)
    assert sorted(ours) == sorted(SERVICES)
    for name, svc in ours.items():
        assert svc["command"] == ["run", name]
    assert {"postgres", "rabbitmq"} <= set(compose["services"])
    assert compose["services"]["postgres"]["image"].startswith("postgres:")
    assert compose["services"]["rabbitmq"]["image"].startswith("rabbitmq:")


def test_each_service_has_a_small_pool_and_the_sum_is_stated(compose: dict[str, Any]) -> None:
    pools = {
        name: int(svc["environment"]["STOCKKEEPER_DATABASE__POOL_SIZE"])
        for name, svc in stockkeeper_services(compose).items()
    }
    assert all(1 <= size <= 20 for size in pools.values()), pools
    total = sum(pools.values())
    text = COMPOSE.read_text()
    stated = re.search(r"= (\d+) connections", text)
    assert stated, "compose.yaml states the total connection count"
    assert int(stated[1]) == total
    for name, size in pools.items():
        assert re.search(rf"\b{re.escape(name)} {size}\b", text), f"{name} {size} in the sum"
    command = compose["services"]["postgres"]["command"]
    setting = next(c for c in command if c.startswith("max_connections="))
    max_connections = int(setting.split("=")[1])
    assert total < max_connections


def test_every_service_environment_is_settings_stockkeeper_accepts(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    empty = tmp_path / "stockkeeper.yaml"
    empty.write_text("")
    secrets = {"ADMIN_TOKEN": "a-test-token-of-24-chars"}
    image_env = dockerfile_env(instructions(DOCKERFILE.read_text()))
    image_env.pop("PATH")
    for name, svc in stockkeeper_services(compose).items():
        env = image_env | {k: interpolate(str(v), secrets) for k, v in svc["environment"].items()}
        settings = load_settings(empty, environ=env)
        assert (
            settings.database.url
            == "postgresql://stockkeeper:stockkeeper@postgres:5432/stockkeeper"
        )
        assert settings.broker.url == "amqp://stockkeeper:stockkeeper@rabbitmq:5672/"
        assert [t.token_env for t in settings.api.tokens] == ["ADMIN_TOKEN"], name
        assert env["ADMIN_TOKEN"] == secrets["ADMIN_TOKEN"]
        health = env["HEALTHCHECK_URL"]
        if name == "inventory-api":
            assert health == f"http://127.0.0.1:{settings.api.inventory_port}/readyz"
        elif name == "admin-api":
            assert health == f"http://127.0.0.1:{settings.api.admin_port}/readyz"
        else:
            assert health == f"http://127.0.0.1:{settings.monitoring.metrics_port}/metrics"
