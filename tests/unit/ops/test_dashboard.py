"""The provisioned Grafana dashboard and the Prometheus rules against the metrics the service exposes.

Every metric a panel or a rule queries must exist in worker.metrics' registry (a renamed metric would
otherwise leave a silently empty panel or an alert that can never fire), every panel uses the provisioned
datasource, and the layout is a valid grid. The same expressions run on a real Prometheus in
tests/integration/ops/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "mind-recall.json"
DATASOURCES = ROOT / "config" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "config" / "grafana" / "provisioning" / "dashboards" / "mind-recall.yml"
RULES = ROOT / "config" / "prometheus" / "rules.yml"

# Series Prometheus itself adds to every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, labels, keywords and ranges removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def exposed_names(metrics: Metrics) -> set[str]:
    """Every series name the registry can expose, from the metric families (labelled or not)."""
    out: set[str] = set()
    for fam in metrics.registry.collect():
        if fam.type == "histogram":
            out |= {fam.name + "_bucket", fam.name + "_sum", fam.name + "_count"}
        elif fam.type == "counter":
            out.add(fam.name + "_total")
        elif fam.type == "info":
            out.add(fam.name + "_info")
        else:
            out.add(fam.name)
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_metric_names_parser() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, stage) (rate(mind_recall_recall_stage_seconds_bucket'
            '{job=~"mind-recall.*", stage!="x"}[$__rate_interval]))) / on (job) group_left up')
    assert metric_names(expr) == {"mind_recall_recall_stage_seconds_bucket", "up"}
    assert metric_names("mind_recall:consumer_lag:sum > 1000 and deriv(x[10m]) > 0") == {
        "mind_recall:consumer_lag:sum", "x"}


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "mind-recall" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"panel {p['title']!r} overlaps another"
        taken |= cells
        if p["type"] != "row":
            assert p.get("targets"), f"panel {p['title']!r} has no query"
            assert p.get("description"), f"panel {p['title']!r} has no description"
    refs = [(p["id"], t["refId"]) for p, t in _targets(dashboard)]
    assert len(refs) == len(set(refs))


def test_every_panel_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    sources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    want = {"type": "prometheus", "uid": sources[0]["uid"]}
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == want, p["title"]
    for p, t in _targets(dashboard):
        assert t["datasource"] == want, (p["title"], t["refId"])


def test_dashboard_provider_points_at_the_dashboard_mount() -> None:
    provider = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    assert mounts[provider["options"]["path"]] == "./config/grafana/dashboards"


def test_every_queried_metric_exists_in_the_registry(dashboard: dict[str, Any]) -> None:
    known = exposed_names(Metrics()) | PROMETHEUS_SERIES
    unknown = {}
    for p, t in _targets(dashboard):
        names = metric_names(t["expr"])
        assert names, f"no metric in {t['expr']!r}"
        if names - known:
            unknown[f"{p['title']}/{t['refId']}"] = sorted(names - known)
    assert unknown == {}


def test_the_dashboard_shows_every_service_metric(dashboard: dict[str, Any]) -> None:
    ns = Metrics().namespace + "_"
    shown = {n for _, t in _targets(dashboard) for n in metric_names(t["expr"])}
    families = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in shown}
    service = {n for n in exposed_names(Metrics()) if n.startswith(ns)}
    missing = {n for n in service
               if n not in shown and n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
               not in families}
    assert missing == set()


def test_a_renamed_metric_would_be_caught() -> None:
    known = exposed_names(Metrics())
    assert "mind_recall_recall_latency_seconds_bucket" in known
    assert "mind_recall_recall_latency_bucket" not in known
    assert "mind_recall_model_info" in known and "mind_recall_dead_letters_total" in known


def test_rules_query_existing_metrics() -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    known = exposed_names(Metrics()) | PROMETHEUS_SERIES | recorded
    for g in groups:
        for r in g["rules"]:
            names = metric_names(r["expr"])
            assert names and names <= known, (r.get("alert") or r.get("record"), names - known)
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert {"MindRecallWorkerDown", "MindRecallLatencyP99AboveSLO", "MindRecallConsumerLagGrowing",
            "MindRecallDeadLetters"} <= alerts
    docs = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8").lower()
    for g in groups:
        for r in g["rules"]:
            if "alert" in r:
                anchor = r["annotations"]["runbook"].partition("#")[2]
                assert f"### {anchor}" in docs, f"docs/operations.md lacks a section for {anchor}"
