"""ItemStore.free_topn: the hits an HNSW search returns at no extra cost (its ef), 0 elsewhere."""

from __future__ import annotations

from mind_recall.settings import load
from worker.store import ItemStore


def test_hnsw_gives_its_ef_and_flat_gives_nothing() -> None:
    hnsw = load(None, overrides=["milvus.index_type=HNSW", 'milvus.search_params={"ef": 64}'], env={})
    assert ItemStore(hnsw.milvus).free_topn() == 64
    assert ItemStore(load(None, overrides=["milvus.index_type=HNSW"], env={}).milvus).free_topn() == 0  # no ef set
    assert ItemStore(load(None, overrides=["milvus.index_type=FLAT"], env={}).milvus).free_topn() == 0
