"""Every kafka-python call goes through this module, so the client choice stays cheap to change.

Consumers never auto-commit: callers commit only after their effect is durable. Producers use acks=all
with idempotence (kafka-python 3 defaults). Dead letters keep the original bytes and carry the reason
in headers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from mind_recall.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "CommitFailedError",
    "ConsumerRecordLike",
    "DeadLetter",
    "KafkaError",
    "OffsetAndMetadata",
    "TopicPartition",
    "client_config",
    "commit_offsets",
    "ensure_topics",
    "make_admin",
    "make_consumer",
    "make_producer",
    "send_dead_letter",
    "subscribe_with_listener",
]

# A header value is bytes; keep each bounded so one bad record cannot bloat the DLQ.
_MAX_REASON = 1000


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by consumers, producers and the admin client (secrets included)."""
    k = settings.kafka
    cfg: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in k.bootstrap_servers.split(",") if s.strip()],
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
        "request_timeout_ms": k.request_timeout_ms,
        # kafka-python doubles its reconnect backoff up to 30 s by default: after a 10 s broker outage the
        # workers then found the group coordinator again only ~30 s after the broker was back. Cap it.
        "reconnect_backoff_max_ms": 2000,
    }
    if k.security_protocol.startswith("SASL"):
        cfg.update(
            sasl_mechanism=k.sasl_mechanism,
            sasl_plain_username=k.sasl_username,
            sasl_plain_password=k.sasl_password,
        )
    if k.security_protocol.endswith("SSL") and k.ssl_cafile:
        cfg["ssl_cafile"] = k.ssl_cafile
    return cfg


def make_consumer(
    settings: Settings, topics: Iterable[str] | None, group_id: str | None, **overrides: Any
) -> KafkaConsumer:
    """A manual-commit consumer reading raw bytes; ``topics=None`` leaves subscription to the caller."""
    cfg = client_config(settings)
    cfg.update(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(1_048_576, settings.worker.max_record_bytes * 2),
    )
    cfg.update(overrides)
    consumer = KafkaConsumer(**cfg)
    if topics is not None:
        consumer.subscribe(list(topics))
    return consumer


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    cfg = client_config(settings)
    cfg.update(
        acks="all",
        linger_ms=5,
        max_request_size=max(1_048_576, settings.worker.max_record_bytes * 2),
    )
    cfg.update(overrides)
    return KafkaProducer(**cfg)


def make_admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(**client_config(settings))


def ensure_topics(
    settings: Settings,
    topics: Mapping[str, int],
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create missing topics (name -> partitions); existing ones are left as they are."""
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, num_partitions=n, replication_factor=1, topic_configs=dict((configs or {}).get(name, {})))
            for name, n in topics.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # metadata propagates asynchronously
            if set(topics) <= set(admin.list_topics()):
                return
            time.sleep(0.1)
        raise KafkaError(f"topics not visible after {timeout_s}s: {sorted(set(topics) - set(admin.list_topics()))}")
    finally:
        admin.close()


def subscribe_with_listener(
    consumer: KafkaConsumer,
    topics: Iterable[str],
    on_assigned: Callable[[list[TopicPartition]], None],
    on_revoked: Callable[[list[TopicPartition]], None],
    on_lost: Callable[[list[TopicPartition]], None] | None = None,
) -> None:
    """Subscribe with rebalance callbacks (they run inside ``poll``; keep them short, no blocking IO).
    ``on_lost``: the member was evicted (session expiry, unknown member), so others may have processed
    its partitions meanwhile; defaults to ``on_revoked``."""

    class _Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            on_revoked(list(revoked))

        def on_partitions_lost(self, lost: Any) -> None:
            (on_lost or on_revoked)(list(lost))

        def on_partitions_assigned(self, assigned: Any) -> None:
            on_assigned(list(assigned))

    consumer.subscribe(list(topics), listener=_Listener())


def commit_offsets(
    consumer: KafkaConsumer, next_offsets: Mapping[TopicPartition, int], timeout_ms: int | None = None
) -> None:
    """Commit the next offset to read per partition (synchronously: the caller's effect is already durable).

    With the broker down this raises (KafkaConnectionError at once, or KafkaTimeoutError after
    ``timeout_ms``, default request_timeout_ms); after the group moved on, CommitFailedError.
    """
    if next_offsets:
        consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in next_offsets.items()}, timeout_ms=timeout_ms)


class ConsumerRecordLike:  # documentation only: the attributes the workers read from kafka records
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record as a value: the original bytes plus why it was rejected."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error_class: str
    reason: str

    @classmethod
    def of(cls, record: Any, error_class: str, reason: str) -> DeadLetter:
        value = record.value
        if record.key is None and value is None:
            value = b""  # Kafka refuses a record with neither key nor value; the header keeps the truth
        return cls(record.topic, record.partition, record.offset, record.key, value, error_class, reason)

    def headers(self) -> list[tuple[str, bytes]]:
        null = [("original_value", b"null")] if self.value == b"" and self.key is None else []
        return [
            *null,
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
            ("error_class", self.error_class.encode()),
            ("reason", self.reason[:_MAX_REASON].encode("utf-8", "replace")),
        ]


def send_dead_letter(producer: KafkaProducer, dlq_topic: str, dead: DeadLetter) -> Any:
    """Queue one dead letter; the caller flushes before committing the source offset."""
    return producer.send(dlq_topic, key=dead.key, value=dead.value, headers=dead.headers())


# -- helpers for the item path (worker/item_writer.py, worker/items.py) ------------------------
def ensure_item_topic(settings: Settings) -> None:
    """[item-embeddings] compacted (key = item id: the topic is the current catalogue) + the DLQ."""
    t = settings.topics
    ensure_topics(
        settings, {t.item_embeddings: t.partitions, t.dlq: 1},
        configs={t.item_embeddings: {"cleanup.policy": "compact"}},
    )


def assign_all(consumer: KafkaConsumer, topic: str, timeout_s: float = 30.0) -> list[TopicPartition]:
    """Manually assign every partition of ``topic`` (no consumer group): for followers of a topic."""
    deadline = time.monotonic() + timeout_s
    parts = consumer.partitions_for_topic(topic)
    while not parts and time.monotonic() < deadline:
        time.sleep(0.1)
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise KafkaError(f"topic {topic} has no partitions after {timeout_s}s")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    return tps

