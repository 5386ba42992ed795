"""Configuration: the YAML file, STOCKKEEPER_SECTION__KEY overrides, and their errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stockkeeper.config import (
    CONFIG_ENV,
    NOT_SETTINGS,
    ConfigError,
    MarketplaceConnectorConfig,
    OutboundWebhookChannelConfig,
    Settings,
    Strategy,
    TokenConfig,
    WmsConnectorConfig,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "stockkeeper.example.yaml"
TOKEN = "an-inline-token-0123456789"


@pytest.fixture(autouse=True)
def _no_config_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each test in an empty directory, so no ./stockkeeper.yaml is picked up."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, doc: object, name: str = "stockkeeper.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    return path


# -- where settings come from --------------------------------------------------------


def test_defaults_without_a_file() -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert s.api.inventory_port == 8080
    assert s.api.admin_port == 8081
    assert s.database.url is None
    assert s.database.pool_size is None  # sized per service: wiring.CONNECTIONS
    assert s.concurrency.strategy is Strategy.CONDITIONAL
    assert s.reservations.default_ttl_seconds == 900
    assert s.logging.json_output is None  # JSON unless stderr is a terminal
    assert s.logging.access_log is True
    assert s.api.tokens == []
    assert s.connectors == []


def test_default_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    write(tmp_path, {"api": {"inventory_port": 7001}})
    assert load_settings(environ={}).api.inventory_port == 7001


def test_yaml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "data_dir": "/var/lib/sk",
            "database": {"url": "postgresql://db/sk", "pool_size": 7},
            "api": {
                "inventory_port": 9100,
                "tokens": [{"name": "ops", "token": TOKEN, "scopes": ["admin"]}],
            },
            "concurrency": {"strategy": "row_lock", "max_retries": 3},
            "logging": {"level": "debug", "json": False},
            "connectors": [{"id": "wms-1", "type": "wms", "url": "http://wms"}],
        },
        name="custom.yaml",
    )
    s = load_settings(path, environ={})
    assert s.data_dir == Path("/var/lib/sk")
    assert s.database.url == "postgresql://db/sk"
    assert s.database.pool_size == 7
    assert s.database.statement_timeout_ms == 15000  # untouched keys keep their default
    assert s.api.inventory_port == 9100
    assert s.api.tokens[0].resolve() == TOKEN
    assert s.concurrency.strategy is Strategy.ROW_LOCK
    assert s.logging.level == "debug"
    assert s.logging.json_output is False
    (wms,) = s.connectors_of(WmsConnectorConfig)
    assert (wms.id, wms.url, wms.page_size) == ("wms-1", "http://wms", 500)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, {"api": {"admin_port": 7002}}, name="elsewhere.yaml")
    s = load_settings(environ={"STOCKKEEPER_CONFIG": str(path)})
    assert s.api.admin_port == 7002


def test_explicit_path_wins_over_environment(tmp_path: Path) -> None:
    a = write(tmp_path, {"api": {"admin_port": 7003}}, name="a.yaml")
    b = write(tmp_path, {"api": {"admin_port": 7004}}, name="b.yaml")
    assert load_settings(a, environ={"STOCKKEEPER_CONFIG": str(b)}).api.admin_port == 7003


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    assert load_settings(path, environ={}) == Settings()


def test_env_override_is_typed(tmp_path: Path) -> None:
    path = write(tmp_path, {"api": {"inventory_port": 7000, "admin_port": 7005}})
    s = load_settings(path, environ={"STOCKKEEPER_API__INVENTORY_PORT": "9000"})
    assert s.api.inventory_port == 9000
    assert type(s.api.inventory_port) is int
    # The rest of the section still comes from the file.
    assert s.api.admin_port == 7005


def test_env_overrides_without_a_file() -> None:
    s = load_settings(
        environ={
            "STOCKKEEPER_API__EXPOSE_NOOP": "true",
            "STOCKKEEPER_CONCURRENCY__STRATEGY": "optimistic",
            "STOCKKEEPER_DATABASE__URL": "postgresql://x/y",
            "STOCKKEEPER_DATA_DIR": "/srv/sk-data",
            "STOCKKEEPER_RESERVATIONS__DEFAULT_TTL_SECONDS": "60",
        }
    )
    assert s.api.expose_noop is True
    assert s.concurrency.strategy is Strategy.OPTIMISTIC
    assert s.database.url == "postgresql://x/y"
    assert s.data_dir == Path("/srv/sk-data")
    assert s.reservations.default_ttl_seconds == 60


def test_empty_env_value_means_null(tmp_path: Path) -> None:
    path = write(tmp_path, {"database": {"url": "postgresql://db/sk"}})
    s = load_settings(path, environ={"STOCKKEEPER_DATABASE__URL": ""})
    assert s.database.url is None


def test_variables_that_are_not_settings_are_ignored() -> None:
    assert NOT_SETTINGS, "the list of reserved STOCKKEEPER_ variables is empty"
    env = {name: "x" for name in NOT_SETTINGS if name != CONFIG_ENV}
    env |= {"OTHER_PREFIX__API__INVENTORY_PORT": "1", "PATH": "/usr/bin"}
    assert load_settings(environ=env) == Settings()


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKKEEPER_API__ADMIN_PORT", "7777")
    monkeypatch.delenv("STOCKKEEPER_CONFIG", raising=False)
    assert load_settings().api.admin_port == 7777


# -- errors name the key -------------------------------------------------------------


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"api": {"inventory_prot": 9000}})
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    msg = str(info.value)
    assert "api.inventory_prot" in msg
    assert "unknown key" in msg
    assert str(path) in msg


def test_unknown_section_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"databse": {"url": "x"}})
    with pytest.raises(ConfigError, match=r"databse: unknown key"):
        load_settings(path, environ={})


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"api": {"inventory_prot": 1, "admin_port": 0}, "logging": {"level": "loud"}},
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    msg = str(info.value)
    for key in ("api.inventory_prot", "api.admin_port", "logging.level"):
        assert key in msg


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"api": {"inventory_port": "eighty"}}, "api.inventory_port"),
        ({"api": {"inventory_port": 70000}}, "api.inventory_port"),
        ({"database": {"pool_size": 0}}, "database.pool_size"),
        ({"concurrency": {"strategy": "yolo"}}, "concurrency.strategy"),
        ({"reservations": {"default_ttl_seconds": [1]}}, "reservations.default_ttl_seconds"),
        # Holds longer than ten years would overflow every expiry time (D-480).
        ({"reservations": {"max_ttl_seconds": 10**12}}, "reservations.max_ttl_seconds"),
        ({"orders": {"payment_timeout_seconds": 10**12}}, "orders.payment_timeout_seconds"),
        ({"api": "not-a-section"}, "api"),
        ({"connectors": [{"id": "Bad Id!", "type": "wms", "url": "http://w"}]}, "connectors.0.id"),
        ({"connectors": [{"id": "w", "type": "telex"}]}, "connectors.0"),
        ({"connectors": [{"id": "w", "type": "wms"}]}, "connectors.0.url"),
        ({"connectors": [{"id": "w", "type": "wms", "url": "ftp://w"}]}, "connectors.0.url"),
        (
            {"connectors": [{"id": "w", "type": "wms", "url": "http://w", "page_sise": 9}]},
            "connectors.0.page_sise",
        ),
        (
            {"connectors": [{"id": "w", "type": "wms", "url": "http://w", "timeout_ms": 0}]},
            "connectors.0.timeout_ms",
        ),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, doc: dict[str, object], key: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert f"  {key}: " in str(info.value)


def test_wrong_value_shows_what_was_given(tmp_path: Path) -> None:
    path = write(tmp_path, {"api": {"inventory_port": "eighty"}})
    with pytest.raises(ConfigError, match=r"api\.inventory_port: .*\(got 'eighty'\)"):
        load_settings(path, environ={})


def test_wrong_type_from_environment_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"STOCKKEEPER_API__INVENTORY_PORT": "ninety"})
    msg = str(info.value)
    assert "api.inventory_port" in msg
    assert "environment" in msg


def test_unknown_env_var_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"STOCKKEEPER_FOO__BAR": "1"})
    msg = str(info.value)
    assert "foo: unknown key" in msg
    assert "environment" in msg


def test_unknown_env_key_in_known_section() -> None:
    with pytest.raises(ConfigError, match=r"api\.inventory_prot: unknown key"):
        load_settings(environ={"STOCKKEEPER_API__INVENTORY_PROT": "9000"})


@pytest.mark.parametrize("name", ["STOCKKEEPER_API____PORT", "STOCKKEEPER_API__"])
def test_env_var_with_empty_segment_is_named(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={name: "1"})


def test_env_vars_that_contradict_each_other() -> None:
    env = {"STOCKKEEPER_API": "1", "STOCKKEEPER_API__INVENTORY_PORT": "9000"}
    with pytest.raises(ConfigError, match="STOCKKEEPER_API"):
        load_settings(environ=env)


@pytest.mark.parametrize(
    ("name", "raw", "key", "value"),
    [
        # YAML would read these as a mapping, a number and a cut-off comment.
        pytest.param("STOCKKEEPER_API__HOST", "::", ("api", "host"), "::", id="ipv6-any"),
        pytest.param(
            "STOCKKEEPER_BROKER__PREFIX", "2026", ("broker", "prefix"), "2026", id="digits"
        ),
        pytest.param(
            "STOCKKEEPER_DATABASE__URL",
            "postgresql://sk:pa #ss@db/sk",
            ("database", "url"),
            "postgresql://sk:pa #ss@db/sk",
            id="hash",
        ),
        pytest.param("STOCKKEEPER_API__HOST", "'::1'", ("api", "host"), "::1", id="quoted"),
        pytest.param("STOCKKEEPER_DATABASE__URL", "null", ("database", "url"), None, id="null"),
    ],
)
def test_a_text_setting_from_the_environment_is_the_text_as_written(
    name: str, raw: str, key: tuple[str, str], value: str | None
) -> None:
    s = load_settings(environ={name: raw})
    assert getattr(getattr(s, key[0]), key[1]) == value


def test_a_key_of_a_list_entry_is_overridden_by_its_number(tmp_path: Path) -> None:
    wms = {"id": "wms-main", "type": "wms", "url": "https://wms.example", "token_env": "WMS_T"}
    token = {"name": "ops", "token": TOKEN, "scopes": ["admin"]}
    path = write(tmp_path, {"api": {"tokens": [token]}, "connectors": [wms]})
    s = load_settings(
        path,
        environ={
            "STOCKKEEPER_CONNECTORS__0__URL": "https://wms.staging.example",
            "STOCKKEEPER_CONNECTORS__0__RATE_LIMIT_RPS": "2",
            "STOCKKEEPER_API__TOKENS__0__SCOPES": "[inventory:read]",
        },
    )
    (conn,) = s.connectors_of(WmsConnectorConfig)
    assert (conn.id, conn.url, conn.rate_limit_rps) == (
        "wms-main",
        "https://wms.staging.example",
        2,
    )
    assert (s.api.tokens[0].name, s.api.tokens[0].scopes) == ("ops", ["inventory:read"])


def test_a_list_entry_the_file_does_not_have_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"STOCKKEEPER_CONNECTORS__0__URL": "https://wms.example"})
    msg = str(info.value)
    assert "STOCKKEEPER_CONNECTORS__0" in msg
    assert "no entry 0" in msg
    assert "STOCKKEEPER_CONNECTORS" in msg


@pytest.mark.parametrize("where", ["file", "environment", "one-key"])
def test_a_variable_named_as_a_secrets_home_is_not_a_setting(tmp_path: Path, where: str) -> None:
    """token_env: STOCKKEEPER_OPS_TOKEN is the secret, not an unknown key "ops_token"
    (whose value the error would have shown)."""
    tokens = [{"token_env": "STOCKKEEPER_OPS_TOKEN", "scopes": ["admin"]}]
    env = {"STOCKKEEPER_OPS_TOKEN": "sk-the-secret-itself-0123"}
    if where == "file":
        path: Path | None = write(tmp_path, {"api": {"tokens": tokens}})
    elif where == "one-key":
        path = write(tmp_path, {"api": {"tokens": [{"token_env": "OTHER", "scopes": ["admin"]}]}})
        env["STOCKKEEPER_API__TOKENS__0__TOKEN_ENV"] = "STOCKKEEPER_OPS_TOKEN"
    else:
        path = None
        env["STOCKKEEPER_API__TOKENS"] = yaml.safe_dump(tokens, default_flow_style=True)
    s = load_settings(path, environ=env)
    assert s.api.tokens[0].token_env == "STOCKKEEPER_OPS_TOKEN"


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("STOCKKEEPER_DATABASE__URL", "db.internal:5432/sk"),
        ("STOCKKEEPER_DATABASE__DIRECT_URL", "mysql://db/sk"),
        ("STOCKKEEPER_BROKER__URL", "rabbitmq.internal:5672"),
    ],
)
def test_a_url_of_another_kind_is_refused_naming_the_key(name: str, raw: str) -> None:
    key = name.removeprefix("STOCKKEEPER_").lower().replace("__", ".")
    with pytest.raises(ConfigError, match=rf"  {re.escape(key)}: .*must be an? (amqp|postgresql)"):
        load_settings(environ={name: raw})


def test_explicit_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"does-not-exist\.yaml does not exist"):
        load_settings("does-not-exist.yaml", environ={})


def test_missing_file_named_by_environment() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"STOCKKEEPER_CONFIG": "/nonexistent/sk.yaml"})


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "api: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, environ={})


def test_a_key_given_twice_is_refused_naming_it(tmp_path: Path) -> None:
    # PyYAML keeps the last one silently: the first api section's port would be lost.
    path = write(tmp_path, "api:\n  inventory_port: 9000\ndatabase: {}\napi:\n  host: 0.0.0.0\n")
    with pytest.raises(ConfigError, match="found the key 'api' twice"):
        load_settings(path, environ={})


@pytest.mark.parametrize("kind", ["directory", "not-utf-8"])
def test_a_config_file_that_cannot_be_read_is_named(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "stockkeeper.yaml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"api:\n  host: \xff\xfe\n")
    with pytest.raises(ConfigError, match=f"config file {re.escape(str(path))} cannot be read"):
        load_settings(path, environ={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(path, environ={})


# -- tokens --------------------------------------------------------------------------


def test_token_needs_token_or_token_env(tmp_path: Path) -> None:
    path = write(tmp_path, {"api": {"tokens": [{"name": "x", "scopes": ["admin"]}]}})
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    msg = str(info.value)
    assert "api.tokens.0" in msg
    assert "exactly one of token or token_env" in msg


def test_token_and_token_env_together_are_refused(tmp_path: Path) -> None:
    tok = {"token": TOKEN, "token_env": "SK_TOKEN", "scopes": ["admin"]}
    path = write(tmp_path, {"api": {"tokens": [tok]}})
    with pytest.raises(ConfigError, match="exactly one of token or token_env"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("token", "key"),
    [
        ({"token": "short", "scopes": ["admin"]}, "api.tokens.0.token"),
        ({"token": TOKEN, "scopes": []}, "api.tokens.0.scopes"),
        ({"token": TOKEN, "scopes": ["root"]}, "api.tokens.0.scopes.0"),
        ({"token": TOKEN, "scopes": ["admin"], "secret": 1}, "api.tokens.0.secret"),
    ],
)
def test_bad_token_names_the_key(tmp_path: Path, token: dict[str, object], key: str) -> None:
    path = write(tmp_path, {"api": {"tokens": [token]}})
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert f"  {key}: " in str(info.value)


def test_token_env_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        {"api": {"tokens": [{"name": "ci", "token_env": "SK_CI_TOKEN", "scopes": ["admin"]}]}},
    )
    s = load_settings(path, environ={})
    monkeypatch.setenv("SK_CI_TOKEN", "from-the-environment-123")
    assert s.api.tokens[0].resolve() == "from-the-environment-123"


@pytest.mark.parametrize("value", [None, ""])
def test_token_env_unset_is_an_error(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("SK_UNSET_TOKEN", raising=False)
    else:
        monkeypatch.setenv("SK_UNSET_TOKEN", value)
    t = TokenConfig(token_env="SK_UNSET_TOKEN", scopes=["inventory:read"])
    with pytest.raises(ConfigError, match="SK_UNSET_TOKEN"):
        t.resolve()


# -- the example file ----------------------------------------------------------------


def test_example_config_validates() -> None:
    assert EXAMPLE.exists(), "stockkeeper.example.yaml is missing from the repository root"
    s = load_settings(EXAMPLE, environ={})
    assert isinstance(s, Settings)


def test_example_config_shows_the_defaults() -> None:
    # Its header says: "the values shown are the defaults unless marked 'example'".
    assert load_settings(EXAMPLE, environ={}) == Settings()


def test_example_config_sets_every_key() -> None:
    """Every setting appears in the example, so it documents them all."""
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))

    def keys(model: type[object], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            key = prefix + (field.alias or name)
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                out |= keys(sub, key + ".")
            else:
                out.add(key)
        return out

    def present(node: object, prefix: str = "") -> set[str]:
        out: set[str] = set()
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, dict):
                    out |= present(v, f"{prefix}{k}.")
                else:
                    out.add(f"{prefix}{k}")
        return out

    assert keys(Settings) - present(doc) == set()


def test_two_connectors_with_one_id_are_refused(tmp_path: Path) -> None:
    wms = {"id": "w", "type": "wms", "url": "http://w"}
    path = write(tmp_path, {"connectors": [wms, wms]})
    with pytest.raises(ConfigError, match="duplicate id w"):
        load_settings(path, environ={})


def test_the_commented_connector_example_is_valid() -> None:
    """The example file's commented ``connectors`` block, uncommented, loads."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# connectors:                                        # example")
    block = ["connectors:"]
    for line in lines[start + 1 :]:
        if not line.startswith("#  "):
            break
        block.append(line[1:].split(" #")[0].rstrip())
    s = Settings.model_validate(yaml.safe_load("\n".join(block)))
    assert [c.type for c in s.connectors] == [
        "wms",
        "erp",
        "webhook",
        "marketplace",
        "shopify",
        "amazon",
        "outbound_webhook",
    ]
    (wms,) = s.connectors_of(WmsConnectorConfig)
    assert (wms.id, wms.page_size, wms.outbound_batch_size) == ("wms-main", 500, 100)


def test_the_connector_examples_explain_every_key_of_their_type() -> None:
    """Every key a connector type takes is explained in the example file's connector
    part (its opening lines, or the commented entries)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    part = text[text.index("# Outside systems") :]
    lines = part.splitlines()
    start = lines.index("# connectors:                                        # example")
    block = ["connectors:"] + [
        line[1:].split(" #")[0].rstrip() for line in lines[start + 1 :] if line.startswith("#  ")
    ]
    s = Settings.model_validate(yaml.safe_load("\n".join(block)))
    missing = {
        c.type: [
            field.alias or name
            for name, field in type(c).model_fields.items()
            if not re.search(rf"\b{field.alias or name}\b", part)
        ]
        for c in s.connectors
    }
    assert {t: keys for t, keys in missing.items() if keys} == {}


def test_a_channels_echo_sources_must_name_connectors(tmp_path: Path) -> None:
    hook = {"id": "shop-orders", "type": "webhook", "secret_env": "SHOP_SECRET"}
    channel = {
        "id": "shop",
        "type": "outbound_webhook",
        "url": "http://hooks.example/stock",
        "secret_env": "SHOP_SECRET",
        "echo_sources": ["shop-orders", "nobody"],
    }
    path = write(tmp_path, {"connectors": [hook, channel]})
    with pytest.raises(ConfigError, match=r"shop.echo_sources names no connector: nobody"):
        load_settings(path, environ={})


def test_amazon_is_held_to_its_published_rate_limit(tmp_path: Path) -> None:
    amazon = {
        "id": "amz",
        "type": "amazon",
        "url": "https://sellingpartnerapi-eu.amazon.com",
        "seller_id": "A1SELLER",
        "marketplace_ids": ["A1PA6795UKMFR9"],
        "rate_limit_rps": 10,
    }
    path = write(tmp_path, {"connectors": [amazon]})
    with pytest.raises(ConfigError, match=r"connectors\.0\.rate_limit_rps"):
        load_settings(path, environ={})


def test_a_shopify_location_must_be_a_location_gid(tmp_path: Path) -> None:
    shop = {
        "id": "shop",
        "type": "shopify",
        "url": "https://x.myshopify.com/admin/api/2026-04/graphql.json",
        "location_id": "123",
    }
    path = write(tmp_path, {"connectors": [shop]})
    with pytest.raises(ConfigError, match=r"connectors\.0\.location_id"):
        load_settings(path, environ={})


# -- retention -------------------------------------------------------------------------


def test_retention_defaults_outlast_the_redelivery_window() -> None:
    s = Settings()
    # 1+2+4+8+16+30x5 s of backoff plus one 30 s lease per attempt.
    assert s.broker.redelivery_window_s() == 181 + 10 * 30
    assert s.retention.processed_message_s > s.broker.redelivery_window_s()
    assert s.retention.consumer_position_s > s.broker.redelivery_window_s()
    assert s.retention.wms_outbound_sent_s > s.broker.redelivery_window_s()


def test_webhook_deliveries_are_kept_longer_than_the_replay_window(tmp_path: Path) -> None:
    hook = {"id": "shop", "type": "webhook", "secret_env": "SHOP_SECRET", "tolerance_s": 7200}
    path = write(tmp_path, {"connectors": [hook], "retention": {"webhook_delivery_s": 3600}})
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert "retention.webhook_delivery_s (3600 s)" in str(info.value)
    assert "shop's tolerance_s (7200 s)" in str(info.value)


def test_redelivery_window_follows_the_retry_settings(tmp_path: Path) -> None:
    doc = {"broker": {"retry_base_ms": 500, "retry_max_ms": 2000, "max_attempts": 4}}
    s = load_settings(write(tmp_path, doc), environ={})
    # 0.5 + 1 + 2 + 2 s, and four 30 s leases.
    assert s.broker.redelivery_window_s() == 5.5 + 4 * 30


@pytest.mark.parametrize(
    "key", ["processed_message_s", "consumer_position_s", "wms_outbound_sent_s"]
)
def test_retention_shorter_than_the_redelivery_window_is_refused(tmp_path: Path, key: str) -> None:
    doc = {"broker": {"max_attempts": 100}, "retention": {key: 3600}}
    with pytest.raises(ConfigError, match=rf"retention.{key} \(3600 s\).*5881 s"):
        load_settings(write(tmp_path, doc), environ={})


def test_pgbouncer_needs_a_direct_url(tmp_path: Path) -> None:
    path = write(tmp_path, {"database": {"url": "postgresql://bouncer/sk", "pgbouncer": True}})
    with pytest.raises(ConfigError, match=r"database\.direct_url is required"):
        load_settings(path, environ={})


# -- --config before the command (D-392) ----------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_read_whether_given_before_or_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from typer.testing import CliRunner

    from stockkeeper.cli import app

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    bad = write(tmp_path, {"api": {"inventory_prot": 1}}, "bad.yaml")
    good = write(tmp_path, {"api": {"inventory_port": 9000}}, "good.yaml")
    runner = CliRunner()

    def check(path: Path) -> tuple[int, str]:
        args = ["--config", str(path), "check-config"]
        if where == "after":
            args = ["check-config", "--config", str(path)]
        result = runner.invoke(app, args)
        return result.exit_code, result.output

    code, out = check(bad)
    assert code == 2
    assert "api.inventory_prot: unknown key" in out
    code, out = check(good)
    assert (code, out.strip()) == (0, f"configuration is valid ({good}: 0 connectors)")
    wms = {"id": "w", "type": "wms", "url": "http://w"}
    one = write(tmp_path, {"connectors": [wms]}, "one.yaml")
    code, out = check(one)
    assert (code, out.strip()) == (0, f"configuration is valid ({one}: 1 connector)")
    # With no file anywhere, "valid" says that only the defaults were checked.
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["check-config"])
    assert (result.exit_code, result.output.strip()) == (
        0,
        "configuration is valid (no stockkeeper.yaml here, so the defaults and "
        "STOCKKEEPER_* variables: 0 connectors)",
    )


def test_check_config_refuses_a_token_variable_that_is_not_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `up` would stop on it (D-394): check-config says so instead of "valid".
    from typer.testing import CliRunner

    from stockkeeper.cli import app

    monkeypatch.delenv("SK_TEST_UNSET_TOKEN", raising=False)
    path = write(
        tmp_path, {"api": {"tokens": [{"token_env": "SK_TEST_UNSET_TOKEN", "scopes": ["admin"]}]}}
    )
    result = CliRunner().invoke(app, ["check-config", str(path)])
    assert result.exit_code == 2, result.output
    assert "SK_TEST_UNSET_TOKEN is not set" in result.output
    monkeypatch.setenv("SK_TEST_UNSET_TOKEN", "a-token-from-the-environment")
    assert CliRunner().invoke(app, ["check-config", str(path)]).exit_code == 0


# -- YAML 1.1's surprises (D-472) ------------------------------------------------------

YAML_11_SURPRISES = """\
api:
  tokens:
    - token: 0123456789abcdef0123
      name: no
      scopes: [admin]
    - token: 1234567890123456
      name: 12:30
      scopes: [inventory:read]
broker:
  prefix: 0123
  prefetch: 010
  max_attempts: 1_000
orders:
  carriers:
    - {id: post, cost: "4.00", reliability: "0.9", transit_days: 010, countries: [NO, SE]}
connectors:
  - id: market
    type: marketplace
    url: http://market.example
    apply_levels: on
    page_size: 1_000
  - id: hook-out
    type: outbound_webhook
    url: http://receiver.example
    secret_env: HOOK_SECRET
    rules:
      skus:
        no: {cap: 1}
        0123: {cap: 2}
        12345: {cap: 3}
        2026-01-01: {cap: 4}
"""


def test_yaml_11_surprises_are_read_as_they_were_written(tmp_path: Path) -> None:
    """D-472: PyYAML reads YAML 1.1, where `no` and `NO` are false, `010` is octal 8,
    `12:30` is 750 and `2026-01-01` a date. Each setting now gets what was written."""
    s = load_settings(write(tmp_path, YAML_11_SURPRISES), environ={})
    assert [t.name for t in s.api.tokens] == ["no", "12:30"]
    assert [t.token for t in s.api.tokens] == ["0123456789abcdef0123", "1234567890123456"]
    assert s.broker.prefix == "0123"  # was octal 83, a number where a text belongs
    assert s.broker.prefetch == 10  # was 8
    assert s.broker.max_attempts == 1000
    (carrier,) = s.orders.carriers
    assert (carrier.transit_days, carrier.countries) == (10, ["NO", "SE"])  # Norway
    market, hook = s.connectors
    assert isinstance(market, MarketplaceConnectorConfig)
    assert (market.apply_levels, market.page_size) == (True, 1000)
    assert isinstance(hook, OutboundWebhookChannelConfig)
    assert sorted(hook.rules.skus) == ["0123", "12345", "2026-01-01", "no"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # YAML 1.1 read these as 750 and 8: a wrong number, silently.
        pytest.param("api:\n  inventory_port: 12:30\n", "api.inventory_port", id="sexagesimal"),
        pytest.param("broker:\n  prefetch: 0x20\n", "broker.prefetch", id="hex"),
    ],
)
def test_a_number_yaml_11_would_have_converted_is_refused_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"  {re.escape(key)}: .*\(got '"):
        load_settings(write(tmp_path, text), environ={})


def test_a_yes_no_value_where_text_belongs_says_to_quote_it(tmp_path: Path) -> None:
    text = "api:\n  tokens:\n    - {token_env: T, name: true, scopes: [admin]}\n"
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={"T": "x" * 20})
    assert "api.tokens.0.name: YAML reads true as a yes/no value" in str(info.value)
    assert "quotes ('true')" in str(info.value)


def test_a_variable_is_read_as_the_file_is() -> None:
    s = load_settings(
        environ={
            "STOCKKEEPER_BROKER__PREFETCH": "010",
            "STOCKKEEPER_ORDERS__CARRIERS": (
                '[{id: post, cost: "4", reliability: "1", transit_days: 1, countries: [NO]}]'
            ),
        }
    )
    assert s.broker.prefetch == 10
    assert s.orders.carriers[0].countries == ["NO"]


@pytest.mark.parametrize("sku", ["..", "TEA ", "A\u200bB"])
def test_a_rule_override_for_a_sku_no_door_takes_is_refused(tmp_path: Path, sku: str) -> None:
    """D-470: the config's per-SKU overrides follow the id rule every door applies; an
    override for a SKU that can never exist would silently apply to nothing."""
    doc = {
        "connectors": [
            {
                "id": "hook-out",
                "type": "outbound_webhook",
                "url": "http://receiver.example",
                "secret_env": "HOOK_SECRET",
                "rules": {"skus": {sku: {"cap": 1}, "TEA": {"cap": 2}}},
            }
        ]
    }
    with pytest.raises(ConfigError, match=r"  connectors\.0\.rules\.skus \(a key\): ") as err:
        load_settings(write(tmp_path, doc), environ={})
    assert "Value error" not in str(err.value)  # the rule's own words
