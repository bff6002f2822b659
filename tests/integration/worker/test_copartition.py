"""A worker refuses to start on topics that are not co-partitioned (a user's clicks, requests and
history must land on the same partition number)."""

from __future__ import annotations

import pytest

from mind_recall.settings import Settings
from worker import kafka_io
from worker.recall_worker import RecallWorker


def test_refuses_topics_with_different_partition_counts(settings: Settings) -> None:
    s = settings.replace("topics.partitions=2")
    t = s.topics
    kafka_io.ensure_topics(s, {t.clicks: 2, t.recall_requests: 3, t.history_changelog: 2})
    worker = RecallWorker(s, engine=None)  # type: ignore[arg-type]  # open() fails before any recall
    with pytest.raises(RuntimeError, match="not co-partitioned") as e:
        worker.open()
    worker.close()
    assert f"'{t.recall_requests}': 3" in str(e.value)
