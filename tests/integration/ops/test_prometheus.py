"""The Grafana dashboard and the alert rules against a real Prometheus (scripts/prometheus-local).

A scrape target exposing the service's metrics under load is scraped every second; then every PromQL
expression of config/grafana/dashboards/mind-recall.json must return data through the HTTP API, the
recording and alert rules must evaluate without errors (and the dead-letter alert must fire, since the
load includes dead letters), and promtool must accept the rules, their unit tests and the configs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "prometheus-local"
PROM_DIR = ROOT / "config" / "prometheus"
RULES = PROM_DIR / "rules.yml"
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "mind-recall.json"
# What Grafana substitutes for $__rate_interval at a 1 s scrape interval is 4 s (4 x scrape); 5 s leaves
# room for scrape jitter.
RATE_INTERVAL = "5s"
DATA_DEADLINE_S = 30.0


@dataclass(frozen=True)
class ScrapeTarget:
    """Prometheus job name -> the host:port addresses serving /metrics for that job."""

    jobs: dict[str, list[str]]


# STAND-IN load: creates the service's real Metrics object (worker.metrics), serves it with
# worker.metrics.serve on a free loopback port (printed on stdout), and records what one recall worker
# plus one item writer record per micro-batch, with plausible values, until it is terminated.
STANDIN_SOURCE = textwrap.dedent(
    """
    import random, sys, time
    from mind_recall.settings import load
    from worker.metrics import MILVUS_OPS, STAGES, from_settings, serve

    settings = load(None, overrides=["metrics.port=0", "metrics.host=127.0.0.1"], env={})
    m = from_settings(settings)
    print(serve(m, settings), flush=True)
    rng = random.Random(7)
    m.model_info.info({"model_version": "standin-1"})
    for i in range(10**9):
        batch = rng.randint(1, 64)                               # recall worker: one micro-batch
        m.recall_batch_size.observe(batch)
        for stage in STAGES:
            m.recall_stage.labels(stage=stage).observe(rng.lognormvariate(-7.0, 0.6))
        for _ in range(batch):
            m.recall_latency.observe(rng.lognormvariate(-4.8, 0.5))  # ~8 ms median, tail past 50 ms
            m.recall_requests.labels(outcome="ok" if rng.random() > 0.05 else "cold_start").inc()
        m.clicks.inc(rng.randint(0, 200))
        m.milvus_seconds.labels(op="search").observe(rng.lognormvariate(-6.0, 0.5))
        m.milvus_seconds.labels(op="get").observe(rng.lognormvariate(-7.5, 0.5))
        if i % 50 == 0:                                          # ~1/s: a malformed request, a retry
            m.dead_letter("recall_requests", "not_json")
            m.recall_requests.labels(outcome="dead_letter").inc()
            m.milvus_errors.labels(op="upsert").inc()
        items = rng.randint(1, 500)                              # item writer: one write batch
        m.item_batch_size.observe(items)
        m.items_upserted.inc(items)
        m.items_deleted.inc(rng.randint(0, 5))
        m.milvus_seconds.labels(op="upsert").observe(rng.lognormvariate(-4.5, 0.4))
        m.milvus_seconds.labels(op="delete").observe(rng.lognormvariate(-5.5, 0.4))
        for _ in range(8):
            m.item_freshness.observe(rng.lognormvariate(-2.5, 0.7))
        m.milvus_rows.set(10000 + i)
        m.item_cache_items.set(10000 + i)
        for topic, lag in (("recall-requests", 40), ("clicks", 200), ("item_embeddings", 500)):
            m.consumer_lag.labels(topic=topic).set(rng.randint(0, lag))
        time.sleep(0.02)
    """
)


@pytest.fixture(name="scrape_target")
def _start_scrape_target() -> Iterator[ScrapeTarget]:
    """STAND-IN until the real worker is ready: a subprocess (``STANDIN_SOURCE``) that serves the real
    ``worker.metrics.Metrics`` registry through ``worker.metrics.serve`` and records the observations
    the recall worker and the item writer make under load (latency, stages, batches, outcomes, clicks,
    Milvus calls and a retried error, item writes and freshness, lag, ~1 dead letter/s, model_info).

    To test the real service instead, make this fixture start ``mind-recall worker`` and
    ``mind-recall items write`` (each with its own ``metrics.port``) wired by the ``settings`` fixture,
    drive them with ``mind-recall produce clicks|requests|item-updates`` plus a few malformed records
    (the dead-letter panel and alert need some), wait until both ports serve /metrics, and yield
    ``ScrapeTarget({"mind-recall-worker": [worker_addr], "mind-recall-items": [writer_addr]})``.
    Nothing else in this file changes.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", STANDIN_SOURCE], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            proc.kill()
            raise RuntimeError(f"stand-in target did not start: {line!r} {proc.communicate()[1][-2000:]}")
        yield ScrapeTarget({"mind-recall-worker": [f"127.0.0.1:{line}"]})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def promtool() -> str:
    """Install Prometheus (apt-get) if needed; skip only when that is impossible on this machine."""
    r = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"prometheus cannot be installed here: {(r.stderr or r.stdout).strip()[-500:]}")
    return os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")


@pytest.fixture
def prometheus(promtool: str, scrape_target: ScrapeTarget, tmp_path: Path) -> Iterator[str]:
    """A fresh real Prometheus scraping ``scrape_target`` every second, with the project's rules."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": addrs}]}
            for job, addrs in scrape_target.jobs.items()
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    port = _free_port()
    env = {**os.environ, "PROMETHEUS_LOCAL_DIR": str(ROOT / ".run" / "prometheus-test")}
    r = subprocess.run([str(SCRIPT), "start", "--fresh", "--port", str(port), str(path)],
                       capture_output=True, text=True, env=env, timeout=90)
    assert r.returncode == 0, f"prometheus-local start failed:\n{r.stdout}\n{r.stderr}"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, env=env, timeout=60)


def _api(url: str, path: str, **params: str) -> Any:
    full = f"{url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(full, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana's interval variable substituted."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"].replace("$__rate_interval", RATE_INTERVAL)))
    return out


def _problem(url: str, expr: str) -> str | None:
    """None when ``expr`` returns at least one series with a finite value, else what is wrong."""
    try:
        data = _api(url, "/api/v1/query", query=expr)
    except Exception as e:  # an HTTP 400 (bad PromQL) lands here
        return f"query failed: {e}"
    if data["resultType"] != "vector" or not data["result"]:
        return "no data"
    if not any(math.isfinite(float(s["value"][1])) for s in data["result"]):
        return f"only non-finite values: {data['result'][:3]}"
    return None


def test_every_dashboard_query_returns_data(prometheus: str) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    deadline = time.monotonic() + DATA_DEADLINE_S
    while True:
        problems = {f"{title}: {expr}": p for title, expr in queries if (p := _problem(prometheus, expr))}
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not problems, json.dumps(problems, indent=1)

    up = _api(prometheus, "/api/v1/query", query='up{job=~"mind-recall.*"}')["result"]
    assert up and all(s["value"][1] == "1" for s in up)

    # The rules evaluate against the real series: no errors, the recording rules produce data, and the
    # dead-letter alert fires (the load dead-letters ~1 record/s) while the worker-down alert does not.
    groups = _api(prometheus, "/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 14
    assert [r["name"] for r in rules if r["health"] == "err"] == []
    assert _problem(prometheus, "mind_recall:recall_latency_seconds:p99_5m") is None
    assert _problem(prometheus, "mind_recall:consumer_lag:sum") is None
    deadline = time.monotonic() + 10
    while True:
        alerts = {a["labels"]["alertname"]: a for a in _api(prometheus, "/api/v1/alerts")["alerts"]}
        if "MindRecallDeadLetters" in alerts or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert alerts["MindRecallDeadLetters"]["labels"]["topic"] == "recall_requests"
    assert alerts["MindRecallDeadLetters"]["state"] == "firing"
    assert "MindRecallWorkerDown" not in alerts


def test_promtool_accepts_rules_and_configs(promtool: str) -> None:
    checks = [
        [promtool, "check", "rules", str(RULES)],
        [promtool, "test", "rules", str(PROM_DIR / "rules.test.yml")],
        [promtool, "check", "config", str(PROM_DIR / "prometheus.yml")],
        [promtool, "check", "config", str(PROM_DIR / "prometheus.local.yml")],
    ]
    for cmd in checks:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{' '.join(cmd[1:])}:\n{r.stdout}\n{r.stderr}"


def test_promtool_rejects_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The check above can fail: a rule with bad PromQL is refused."""
    bad = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    bad["groups"][0]["rules"][0]["expr"] = "histogram_quantile(0.99, sum by (le) (rate(x[5m]))"
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
