"""The Grafana dashboard and the alert rules against a real Prometheus (scripts/prometheus-local).

The real service is scraped every second: ``mind-recall worker`` (item writer + recall worker + HTTP API
in one process) serving a small model trained and exported for the test session, under a short load
through Kafka from the project's producers (clicks, open-loop recall requests, item updates, malformed
records). Every PromQL expression of config/grafana/dashboards/mind-recall.json must then return data
through the HTTP API, the recording and alert rules must evaluate without errors (and the dead-letter
alert must fire for both consumers, since the load includes dead letters), and promtool must accept the
rules, their unit tests and the configs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mind_recall.settings import Settings

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
WORKER_START_S = 60.0
# The load runs while Prometheus scrapes and the test queries; this bounds it if the test hangs.
LOAD_MAX_S = 60.0


@dataclass(frozen=True)
class ScrapeTarget:
    """Prometheus job name -> the host:port addresses serving /metrics for that job."""

    jobs: dict[str, list[str]]


@pytest.fixture(scope="session")
def export_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recall tests' small trained + exported model (tests/integration/worker/recall_testkit.py),
    built once per session and shared with them through pytest's session temp dir."""
    kit = str(ROOT / "tests" / "integration" / "worker")
    if kit not in sys.path:
        sys.path.insert(0, kit)
    from recall_testkit import build_export

    return build_export(tmp_path_factory.getbasetemp())


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


class Load:
    """A short, steady load through Kafka with the project's producers, in two threads until stopped
    (at most ``LOAD_MAX_S``), in rounds of about a second: open-loop recall requests plus a replay of
    some users' clicks, item updates of the served model version, and in each round one malformed
    record per consumer so that dead letters keep coming (a rate, and so the alert, needs increases
    that Prometheus sees, not only a count reached before its first scrape)."""

    def __init__(self, settings: Settings, export_base: Path, http_url: str) -> None:
        from worker import kafka_io
        from worker.items import load_export

        self.s = settings
        self.http_url = http_url
        self.data = export_base / "data" / "train"
        self.version, self.dim, *_ = load_export(export_base / "export")
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.rounds = 0
        self.producer = kafka_io.make_producer(settings)
        self.threads = [
            threading.Thread(target=self._loop, args=(f,), daemon=True) for f in (self._requests, self._items)
        ]

    def start(self) -> Load:
        from mind_recall.wire import encode_request, user_key
        from producers.traffic import replay_clicks

        replay_clicks(self.s, self.data, users=60)  # histories for the users the requests ask about
        # one request with top_k=0: an error result (outcome="error"), not a dead letter
        bad = encode_request("bad-top-k", 1, 0, int(time.time() * 1000))
        self.producer.send(self.s.topics.recall_requests, key=user_key(1), value=bad)
        self.producer.flush()
        for th in self.threads:
            th.start()
        return self

    def _loop(self, one_round: Any) -> None:
        try:
            deadline = time.monotonic() + LOAD_MAX_S
            while not self.stop.is_set() and time.monotonic() < deadline:
                one_round()
                self.rounds += 1
        except BaseException as e:  # surfaced by close()
            self.errors.append(e)

    def _requests(self) -> None:
        from producers.traffic import replay_clicks, run_open_loop

        run_open_loop(self.s, rate=40, duration=1.0, user_ids=range(60), top_k=20, wait_results=False)
        replay_clicks(self.s, self.data, users=3)
        self.producer.send(self.s.topics.recall_requests, key=b"1", value=b"not json")
        self._http()

    def _http(self) -> None:
        """One synchronous recall and one health probe through the worker's HTTP API."""
        body = json.dumps({"top_k": 5, "hist_item": [[1, 2, 3]]}).encode()
        req = urllib.request.Request(f"{self.http_url}/rec/recall", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200 and len(json.loads(resp.read())["results"]) == 1
        with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=10) as resp:
            assert resp.status == 200

    def _items(self) -> None:
        from producers.items import publish, synthetic_updates

        events = synthetic_updates(20, self.dim, 600, delete_ratio=0.1, seed=self.rounds, model_version=self.version)
        publish(self.s, events, total=20, rate=20, progress=False, live_ts=True)
        # the item topic is compacted: a record there needs a key
        self.producer.send(self.s.topics.item_embeddings, key=b"7", value=b"not json")

    def close(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(15)
        self.producer.close(timeout=5)
        assert not self.errors, self.errors


@pytest.fixture(name="scrape_target")
def _start_scrape_target(settings: Settings, export_base: Path, tmp_path: Path) -> Iterator[ScrapeTarget]:
    """The real service under load: ``mind-recall worker`` with all roles in one process (item writer,
    recall worker, HTTP API; Milvus Lite needs them together) serving the test model, wired to this
    test's topics, groups and Milvus Lite file, on a fixed free metrics port, driven by :class:`Load`."""
    port, http_port = _free_port(), _free_port()
    overrides = {
        "kafka.bootstrap_servers": settings.kafka.bootstrap_servers,
        "milvus.uri": settings.milvus.uri,
        "worker.group_id": settings.worker.group_id,
        "worker.item_writer_group": settings.worker.item_writer_group,
        "worker.session_timeout_ms": "6000",
        "metrics.host": "127.0.0.1",
        "metrics.port": str(port),
        "http.port": str(http_port),
        **{f"topics.{k}": getattr(settings.topics, k)
           for k in ("clicks", "item_embeddings", "recall_requests", "recall_results", "dlq", "history_changelog")},
    }
    args = [sys.executable, "-m", "cli", "worker", "--export", str(export_base / "export"), "--load-items"]
    for k, v in overrides.items():
        args += ["-o", f"{k}={v}"]
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "MIND_RECALL_LOG": "INFO"})
    load: Load | None = None
    try:
        # up and joined: the model is loaded, both consumers report lag (set once they own partitions;
        # both label it with the topic's role) and the HTTP API answers
        joined = ("mind_recall_model_info{", 'topic="item_embeddings"', 'topic="recall_requests"')
        deadline = time.monotonic() + WORKER_START_S
        while True:
            text = _scrape(port)
            if all(mark in text for mark in joined) and _answers(f"http://127.0.0.1:{http_port}/healthz"):
                break
            assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"worker not up after {WORKER_START_S}s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        load = Load(settings, export_base, f"http://127.0.0.1:{http_port}")
        load.start()
        yield ScrapeTarget({"mind-recall-worker": [f"127.0.0.1:{port}"]})
    finally:
        if load is not None:
            load.stop.set()
            for th in load.threads:  # a round in flight ends before the worker (and its API) stops
                th.join(15)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        tail = log.read_text()[-3000:]
        if load is not None:
            load.close()
    assert rc == 0, f"worker did not stop cleanly on SIGTERM (rc {rc}):\n{tail}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:  # not listening yet (URLError is an OSError)
        return False


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


# The load really went through the worker, and the gauges hold measured values (an unset gauge reads 0,
# which the dashboard check alone would accept). milvus_rows is refreshed by the item writer every 10 s.
LOAD_CHECKS = (
    'sum(mind_recall_recall_requests_total{outcome="ok"}) > 0',
    'sum(mind_recall_recall_requests_total{outcome="error"}) > 0',
    "sum(mind_recall_clicks_total) > 0",
    "sum(mind_recall_items_upserted_total) > 0",
    "sum(mind_recall_items_deleted_total) > 0",
    "max(mind_recall_milvus_rows) > 0",
    "max(mind_recall_item_cache_items) > 0",
)


def test_every_dashboard_query_returns_data(prometheus: str) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    queries += [("load reached the worker", expr) for expr in LOAD_CHECKS]
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
    # dead-letter alert fires for both consumers (the load sent malformed requests and item records)
    # while the worker-down alert does not. Rules run every second, a step behind the scrapes: poll.
    recorded = ("mind_recall:recall_latency_seconds:p99_5m", "mind_recall:consumer_lag:sum")
    deadline = time.monotonic() + 15
    while True:
        groups = _api(prometheus, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        missing = {expr: p for expr in recorded if (p := _problem(prometheus, expr))}
        alerts = [a for a in _api(prometheus, "/api/v1/alerts")["alerts"] if a["state"] == "firing"]
        dlq_topics = {a["labels"]["topic"] for a in alerts if a["labels"]["alertname"] == "MindRecallDeadLetters"}
        if (not missing and {"recall_requests", "item_embeddings"} <= dlq_topics) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rules) == 14
    assert [r["name"] for r in rules if r["health"] == "err"] == []
    assert not missing, missing
    assert {"recall_requests", "item_embeddings"} <= dlq_topics, alerts
    assert "MindRecallWorkerDown" not in {a["labels"]["alertname"] for a in alerts}


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
