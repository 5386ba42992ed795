"""The shipped Grafana dashboard and Prometheus rules use only metrics stockkeeper exports,
each by a series name it really has and by labels it really carries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from stockkeeper.observability.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAME = re.compile(r"\bstockkeeper_[a-z0-9_]+")
# by (a, b) / without (a) of an aggregation, and label matchers {a="x", b=~"y"}.
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
# The series each kind of collector exposes, by the name prometheus_client registers.
SERIES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported() -> dict[str, tuple[str, set[str]]]:
    """Every series name stockkeeper exports: its kind and its labels (``le`` on a
    histogram's buckets)."""
    series: dict[str, tuple[str, set[str]]] = {}
    for collector in Metrics().registry._collector_to_names:
        kind = collector._type
        labels = set(collector._labelnames)
        name = collector._name
        for suffix in SERIES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            series[name + suffix] = (kind, labels | extra)
    return series


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "stockkeeper-rules.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_expressions() -> list[str]:
    return [rule["expr"] for rule in rules()]


def dashboard_expressions() -> list[str]:
    doc = json.loads((DEPLOY / "grafana" / "stockkeeper-dashboard.json").read_text())
    panels = list(doc["panels"])
    for panel in list(panels):  # rows hold their panels when collapsed
        panels += panel.get("panels", [])
    exprs = [t["expr"] for panel in panels for t in panel.get("targets", []) if "expr" in t]
    exprs += [
        v["query"] if isinstance(v["query"], str) else v["query"].get("query", "")
        for v in doc.get("templating", {}).get("list", [])
        if v.get("type") == "query"
    ]
    return exprs


def problems(expr: str, known: dict[str, tuple[str, set[str]]]) -> list[str]:
    """What in ``expr`` names a series or a label stockkeeper does not export."""
    found: list[str] = []
    names = NAME.findall(expr)
    if not names:
        return [f"{expr!r} uses no stockkeeper metric"]
    labels: set[str] = set()
    for name in names:
        if name not in known:
            found.append(f"{name} is not a series stockkeeper exports")
        else:
            labels |= known[name][1]
    used = {
        label.strip()
        for group in GROUPING.findall(expr)
        for label in group.split(",")
        if label.strip()
    }
    used |= {m for block in MATCHERS.findall(expr) for m in MATCHER_LABEL.findall(block)}
    found += [f"label {label!r} is not on {names}" for label in sorted(used - labels)]
    return found


def test_the_checker_catches_a_wrong_series_or_label() -> None:
    known = exported()
    assert problems("sum by (result) (rate(stockkeeper_reservations_total[1m]))", known) == []
    assert problems("rate(stockkeeper_reservations[1m])", known)  # the family, no series
    assert problems("stockkeeper_outbox_backlog_total", known)  # a gauge has no _total
    assert problems("histogram_quantile(0.99, stockkeeper_sync_lag_seconds)", known)
    assert problems("max by (queue) (stockkeeper_sync_lag_p99_seconds)", known)
    assert problems('stockkeeper_circuit_state{channel="x"}', known)


def test_every_metric_and_label_the_rules_use_is_exported() -> None:
    known = exported()
    assert rule_expressions()
    assert [p for expr in rule_expressions() for p in problems(expr, known)] == []


def test_every_metric_and_label_the_dashboard_uses_is_exported() -> None:
    known = exported()
    assert dashboard_expressions()
    assert [p for expr in dashboard_expressions() for p in problems(expr, known)] == []


def test_an_alerts_annotations_name_only_labels_its_expression_keeps() -> None:
    known = exported()
    for rule in rules():
        text = " ".join(str(v) for v in rule.get("annotations", {}).values())
        wanted = set(TEMPLATE_LABEL.findall(text))
        kept = {
            label.strip()
            for group in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"])
            for label in group.split(",")
        }
        if not re.search(r"\b(sum|max|min|avg|count)\b", rule["expr"]):
            kept = {label for n in NAME.findall(rule["expr"]) for label in known[n][1]}
        assert wanted <= kept, (rule["alert"], wanted - kept)


def test_every_alert_is_complete() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]


def test_the_rules_cover_what_an_operator_must_be_woken_for() -> None:
    used = " ".join(rule_expressions())
    for metric in (
        "stockkeeper_sync_lag_p99_seconds",
        # The threshold the propagator was configured with (monitoring.p99_lag_alert_ms).
        "stockkeeper_sync_lag_alerting",
        "stockkeeper_outbox_oldest_age_seconds",
        "stockkeeper_dead_letters_total",
        "stockkeeper_circuit_state",
        "stockkeeper_source_cursor_age_seconds",
        "stockkeeper_wms_shortfalls_total",
        "stockkeeper_oversell_total",
    ):
        assert metric in used


def test_the_dashboard_shows_what_architecture_section_8_names() -> None:
    used = " ".join(dashboard_expressions())
    for metric in (
        "stockkeeper_http_request_duration_seconds_bucket",
        "stockkeeper_reservations_total",
        "stockkeeper_oversell_total",
        "stockkeeper_outbox_backlog",
        "stockkeeper_queue_depth",
        "stockkeeper_consumer_retries_total",
        "stockkeeper_dead_letters_total",
        "stockkeeper_sync_lag_seconds_bucket",
        "stockkeeper_circuit_state",
        "stockkeeper_connector_rate_limit_wait_seconds_total",
    ):
        assert metric in used, metric
