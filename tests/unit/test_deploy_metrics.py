"""The shipped Grafana dashboard and Prometheus rules use only metrics stockkeeper exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from stockkeeper.observability.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAME = re.compile(r"\bstockkeeper_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_total")


def exported() -> set[str]:
    names: set[str] = set()
    for metric in Metrics().registry.collect():
        names.add(metric.name)
        names.update(s.name for s in metric.samples)
        names.update(metric.name + suffix for suffix in SUFFIXES)
    return names


def rule_expressions() -> list[str]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "stockkeeper-rules.yaml").read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    doc = json.loads((DEPLOY / "grafana" / "stockkeeper-dashboard.json").read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def test_every_metric_the_rules_use_is_exported() -> None:
    known = exported()
    used = {n for expr in rule_expressions() for n in NAME.findall(expr)}
    assert used
    assert used - known == set()


def test_every_metric_the_dashboard_uses_is_exported() -> None:
    known = exported()
    used = {n for expr in dashboard_expressions() for n in NAME.findall(expr)}
    assert used
    assert used - known == set()


def test_the_rules_cover_what_an_operator_must_be_woken_for() -> None:
    used = " ".join(rule_expressions())
    for metric in (
        "stockkeeper_sync_lag_p99_seconds",
        "stockkeeper_outbox_oldest_age_seconds",
        "stockkeeper_dead_letters_total",
        "stockkeeper_circuit_state",
        "stockkeeper_source_cursor_age_seconds",
        "stockkeeper_wms_shortfalls_total",
        "stockkeeper_oversell_total",
    ):
        assert metric in used
