"""Shared fixtures. Integration tests use the real local Kafka broker (scripts/kafka-local) and
Milvus Lite in a per-test directory; topic names and group ids are unique per test."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mind_recall.settings import Settings, load

ROOT = Path(__file__).resolve().parents[1]
KAFKA_BOOTSTRAP = os.environ.get("MIND_RECALL_TEST_KAFKA", "127.0.0.1:9092")


def _port_open(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The real local broker; started with scripts/kafka-local if it is not up yet."""
    if not _port_open(KAFKA_BOOTSTRAP):
        port = KAFKA_BOOTSTRAP.rpartition(":")[2]
        subprocess.run(
            [str(ROOT / "scripts" / "kafka-local"), "start"],
            check=True, env={**os.environ, "KAFKA_PORT": port},
        )
    assert _port_open(KAFKA_BOOTSTRAP), f"no Kafka broker at {KAFKA_BOOTSTRAP}"
    return KAFKA_BOOTSTRAP


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test, for topics and consumer groups."""
    name = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name)[:40].strip("-")
    return f"t-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def milvus_uri(tmp_path: Path) -> str:
    return str(tmp_path / "milvus.db")


@pytest.fixture
def settings(kafka_bootstrap: str, unique: str, milvus_uri: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings pointing at the local broker, per-test topics/groups and a per-test Milvus Lite file."""
    topics = ["clicks", "item_embeddings", "recall_requests", "recall_results", "dlq", "history_changelog",
              "model_control"]
    overrides = [f"kafka.bootstrap_servers={kafka_bootstrap}", f"milvus.uri={milvus_uri}"]
    overrides += [f"topics.{t}={unique}-{t.replace('_', '-')}" for t in topics]
    overrides += [
        f"worker.group_id={unique}-workers",
        f"worker.item_writer_group={unique}-writer",
        f"worker.export_dir={tmp_path / 'export'}",
        "metrics.port=0",
        "http.port=0",
    ]
    yield load(None, overrides=overrides, env={})
