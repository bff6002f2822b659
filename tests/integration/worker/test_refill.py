"""Re-running a fill (worker --load-items after a restart, compose's model-init on every start, a
second `items rollout`) must not bring deleted items back nor revert streamed updates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mind_recall.settings import Settings
from worker.items import load_export
from worker.recall import load_into_store
from worker.rollout import rollout
from worker.store import ItemStore


@pytest.mark.parametrize("fill", ["load_into_store", "rollout"])
def test_a_second_fill_keeps_streamed_deletes_and_updates(
    settings: Settings, export_base: Path, fill: str
) -> None:
    export = export_base / "export"
    _, dim, ids, _, _ = load_export(export)
    store = ItemStore(settings.milvus)
    try:
        def do_fill() -> str:
            if fill == "rollout":
                return rollout(store, export).collection
            return load_into_store(store, export)[0]

        coll = do_fill()
        assert store.count(coll) == len(ids)
        gone, changed = int(ids[0]), int(ids[1])
        new_vec = np.full((1, dim), 0.5, np.float32)
        store.delete(coll, np.array([gone], np.int64))
        store.upsert(coll, np.array([changed], np.int64), new_vec, np.array([2**40], np.int64))

        assert do_fill() == coll  # e.g. a restart
        found, got = store.get_vectors(np.array([gone, changed], np.int64), coll)
        assert found.tolist() == [changed]
        np.testing.assert_allclose(got[0], new_vec[0])
        assert store.count(coll) == len(ids) - 1
        if fill == "rollout":  # an explicit refill does overwrite
            rollout(store, export, refill=True)
            found, got = store.get_vectors(np.array([gone, changed], np.int64), coll)
            assert sorted(found.tolist()) == sorted([gone, changed])
    finally:
        store.close()
