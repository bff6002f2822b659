"""ItemStore and rollouts on a real Milvus Lite (per-test file)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

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

    ids = np.arange(1, 301, dtype=np.int64)
    vecs = rng.standard_normal((300, 8)).astype(np.float32)
    store.upsert(name, ids, vecs, np.full(300, 5, np.int64))
    store.upsert(name, ids[:10], vecs[:10] * 2, np.full(10, 6, np.int64))  # overwrite
    store.delete(name, ids[290:])
    assert store.count() == 290 and store.count(name) == 290

    got_ids, got = store.get_vectors(np.array([1, 2, 295, 9999]))
    order = np.argsort(got_ids)
    assert got_ids[order].tolist() == [1, 2]
    np.testing.assert_allclose(got[order], vecs[:2] * 2, rtol=1e-6)

    top_ids, scores = store.search(vecs[[20, 295]], top_k=5)
    live_vecs = vecs.copy()
    live_vecs[:10] *= 2
    exact = np.argsort(-(vecs[[20, 295]] @ live_vecs[:290].T), axis=1)[:, :5] + 1  # ids = row + 1
    assert top_ids.tolist() == exact.tolist()  # FLAT + IP: exact
    assert not np.isin(top_ids, ids[290:]).any()  # deleted ids never come back
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
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
