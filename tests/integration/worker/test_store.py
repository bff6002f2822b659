"""ItemStore and rollouts on a real Milvus Lite (per-test file)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from recall_testkit import store_round_trip

from mind_recall.settings import Settings
from worker.rollout import drop_version, rollout
from worker.store import ItemStore, SchemaMismatch, StoreError


def _export(d: Path, version: str, ids: np.ndarray, vecs: np.ndarray) -> Path:
    d.mkdir(parents=True)
    np.savez(d / "items.npz", ids=ids, vectors=vecs)
    (d / "manifest.json").write_text(
        json.dumps(
            {
                "model_version": version,
                "dim": vecs.shape[1],
                "k": 4,
                "maxlen": 20,
                "item_count": len(ids) + 1,
                "created_ts": 1_700_000_000.0,
            }
        )
    )
    return d


def test_crud_search_and_schema_checks(settings: Settings) -> None:
    store = ItemStore(settings.milvus)
    rng = np.random.default_rng(0)
    name = store.ensure_collection("v1.0/a", 8)
    assert name == "items_v1_0_a" and store.ensure_collection("v1.0/a", 8) == name  # idempotent
    with pytest.raises(SchemaMismatch, match="dim 8"):
        store.ensure_collection("v1.0/a", 16)
    assert store.live() is None
    store.set_alias(name)
    assert store.live() == (name, "v1.0/a", 8)

    _, vecs = store_round_trip(store, name, rng)
    few, few_scores = store.search(vecs[:1], top_k=400)
    assert (few[0] == -1).sum() == 110 and np.isneginf(few_scores[0, -1])
    store.close()


def test_unavailable_is_store_error(settings: Settings) -> None:
    bad = ItemStore(settings.milvus.__class__(uri="http://127.0.0.1:1", timeout_s=1.0))
    with pytest.raises(StoreError, match="milvus"):
        bad.ping()


def test_rollout_switches_alias_and_never_mixes_versions(settings: Settings, tmp_path: Path) -> None:
    store = ItemStore(settings.milvus)
    rng = np.random.default_rng(1)
    a_ids, b_ids = np.arange(1, 201), np.arange(1001, 1201)
    a = rollout(store, _export(tmp_path / "a", "A", a_ids, rng.standard_normal((200, 8)).astype(np.float32)))
    b = rollout(store, _export(tmp_path / "b", "B", b_ids, rng.standard_normal((200, 8)).astype(np.float32)))
    assert store.live() == b and store.count(a.collection) == 200  # the old one is kept
    with pytest.raises(StoreError, match="live"):
        drop_version(store, "B")

    queries = rng.standard_normal((16, 8)).astype(np.float32)
    mixed, seen, stop = [], set(), threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            ids, _ = store.search(queries, top_k=10)
            versions = {("A" if i < 1000 else "B") for i in ids.ravel().tolist() if i >= 0}
            seen.update(versions)
            if len(versions) != 1:
                mixed.append(versions)

    t = threading.Thread(target=search_loop)
    t.start()
    for i in range(40):
        store.set_alias(a.collection if i % 2 == 0 else b.collection)
    stop.set()
    t.join()
    assert not mixed and seen == {"A", "B"}
    store.set_alias(b.collection)
    assert drop_version(store, "A") == a.collection and store.list_collections() == [b.collection]
    store.close()
