"""Evaluation against the serving store: ``mind-recall evaluate --index milvus`` (plugged into
``model.infer.SEARCHERS`` by the command line, so model/ never imports the store)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable

import numpy as np

from mind_recall.settings import Settings
from worker.store import ItemStore

log = logging.getLogger(__name__)


def milvus_searcher(
    settings: Settings, ids: np.ndarray, vectors: np.ndarray
) -> tuple[Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], Callable[[], None]]:
    """Fill a Milvus collection named after the item vectors' hash and search it (Strong consistency,
    so every upserted vector is visible). Returns (search, cleanup); cleanup drops the collection."""
    version = "eval_" + hashlib.sha256(vectors.tobytes()).hexdigest()[:12]
    store = ItemStore(dataclasses.replace(settings.milvus, consistency_level="Strong"))
    collection = store.ensure_collection(version, vectors.shape[1])
    ts = np.zeros(ids.size, dtype=np.int64)
    for lo in range(0, ids.size, 5000):
        store.upsert(collection, ids[lo : lo + 5000], vectors[lo : lo + 5000], ts[lo : lo + 5000])
    log.info("evaluating against Milvus collection %s (%d items)", collection, ids.size)

    def search(queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        found_ids, scores = store.search(np.asarray(queries, dtype=np.float32), top_k, collection=collection)
        return np.asarray(found_ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)

    def cleanup() -> None:
        try:
            store.drop(collection)
        finally:
            store.close()

    return search, cleanup
