"""Every Prometheus metric of the service, in one place (docs/metrics.md is the catalogue).

Conventions: ``_seconds`` histograms with ms-resolution buckets that include each SLO threshold,
``_total`` counters, and label values drawn from small fixed sets (never ids or free text).
The namespace comes from ``metrics.namespace``; metrics live in their own registry so tests and
several in-process components never collide with the global default registry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

from mind_recall.settings import Settings

log = logging.getLogger(__name__)

# 0.5 ms .. 10 s; 50 ms is the recall p99 SLO and 1 s the freshness p99 SLO: both are boundaries.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

STAGES = ("decode", "history", "encode", "search", "merge", "publish", "commit")
OUTCOMES = ("ok", "cold_start", "error", "dead_letter")
DLQ_REASONS = (
    "not_json", "missing_field", "wrong_type", "bad_id", "wrong_dim", "not_finite", "wrong_model_version",
    "oversized", "bad_top_k", "bad_history", "key_mismatch", "undeliverable", "other",
)
MILVUS_OPS = ("upsert", "delete", "search", "get", "count")


def reason_label(reason: str) -> str:
    """Map a free-form reason code to the bounded label set."""
    return reason if reason in DLQ_REASONS else "other"


@dataclass
class Metrics:
    """Handles to the service's metrics, bound to one registry."""

    namespace: str = "mind_recall"
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        ns, reg = self.namespace, self.registry
        # recall path
        self.recall_latency = Histogram(
            "recall_latency_seconds", "Request timestamp to result produced", namespace=ns,
            buckets=LATENCY_BUCKETS, registry=reg)
        self.recall_stage = Histogram(
            "recall_stage_seconds", "Time per micro-batch in each recall stage", ["stage"], namespace=ns,
            buckets=LATENCY_BUCKETS, registry=reg)
        self.recall_batch_size = Histogram(
            "recall_batch_size", "Requests per micro-batch", namespace=ns, buckets=BATCH_BUCKETS,
            registry=reg)
        self.recall_requests = Counter(
            "recall_requests_total", "Recall requests by outcome", ["outcome"], namespace=ns, registry=reg)
        self.http_request = Histogram(
            "http_request_seconds", "HTTP API request duration (received to response sent) by endpoint and "
            "status class", ["endpoint", "code"], namespace=ns, buckets=LATENCY_BUCKETS, registry=reg)
        self.clicks = Counter(
            "clicks_total", "Click events applied to user history", namespace=ns, registry=reg)
        # item path
        self.items_upserted = Counter(
            "items_upserted_total", "Item vectors acknowledged by Milvus", namespace=ns, registry=reg)
        self.items_deleted = Counter(
            "items_deleted_total", "Item deletes acknowledged by Milvus", namespace=ns, registry=reg)
        self.item_batch_size = Histogram(
            "item_batch_size", "Item events per Milvus write batch", namespace=ns, buckets=BATCH_BUCKETS,
            registry=reg)
        self.item_freshness = Histogram(
            "item_freshness_seconds", "Item event timestamp to Milvus write acknowledged", namespace=ns,
            buckets=LATENCY_BUCKETS, registry=reg)
        self.milvus_seconds = Histogram(
            "milvus_seconds", "Milvus call duration by operation", ["op"], namespace=ns,
            buckets=LATENCY_BUCKETS, registry=reg)
        self.milvus_errors = Counter(
            "milvus_errors_total", "Failed Milvus calls by operation (retried)", ["op"], namespace=ns,
            registry=reg)
        self.milvus_rows = Gauge("milvus_rows", "Rows in the live collection", namespace=ns, registry=reg)
        self.item_cache_items = Gauge(
            "item_cache_items", "Item vectors held in the worker's live cache", namespace=ns, registry=reg)
        # errors and lag
        self.dead_letters = Counter(
            "dead_letters_total", "Records sent to the dead-letter topic", ["topic", "reason"], namespace=ns,
            registry=reg)
        self.consumer_lag = Gauge(
            "consumer_lag", "Records behind the log end, summed over assigned partitions", ["topic"],
            namespace=ns, registry=reg)
        self.model_info = Info("model", "The model version being served", namespace=ns, registry=reg)
        self.model_rollouts = Counter(
            "model_rollouts_total", "Announced model versions this process switched to (ok) or could not serve "
            "(failed: it kept the old one)", ["outcome"], namespace=ns, registry=reg)
        self.model_rollout_failed = Gauge(
            "model_rollout_failed", "1 while the last announced model version could not be served (the old one "
            "is served)", namespace=ns, registry=reg)
        # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux /proc; no namespace, the
        # standard names): memory per worker grows with the item cache, the dashboard shows it.
        ProcessCollector(registry=reg)
        # Known label values start at 0, so rate() reads 0 rather than "no data" before the first event
        # (dashboards and the error-ratio alert see these series from the first scrape).
        for outcome in OUTCOMES:
            self.recall_requests.labels(outcome=outcome)
        for op in MILVUS_OPS:
            self.milvus_errors.labels(op=op)
        for outcome in ("ok", "failed"):
            self.model_rollouts.labels(outcome=outcome)

    def http_observe(self, endpoint: str, status: int, seconds: float) -> None:
        """``endpoint``: one of the API's routes, or "other" (the caller keeps the label set bounded)."""
        self.http_request.labels(endpoint=endpoint, code=f"{status // 100}xx").observe(seconds)

    def dead_letter(self, topic_role: str, reason: str) -> None:
        """Count one dead letter; ``topic_role`` is clicks|item_embeddings|recall_requests (bounded)."""
        self.dead_letters.labels(topic=topic_role, reason=reason_label(reason)).inc()


def from_settings(settings: Settings) -> Metrics:
    return Metrics(namespace=settings.metrics.namespace)


def serve(metrics: Metrics, settings: Settings) -> int | None:
    """Expose /metrics on metrics.host:metrics.port (loopback by default); returns the bound port."""
    if not settings.metrics.enabled:
        return None
    server, _thread = start_http_server(
        settings.metrics.port, addr=settings.metrics.host, registry=metrics.registry)
    port = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", settings.metrics.host, port)
    return port
