"""Model rollout for item vectors: fill the new version's collection, wait until it is searchable,
switch the alias atomically, keep the old collection until ``items drop``.

Searches that name the alias see either the old or the new collection, never a mix: Milvus resolves
the alias per request. The recall worker pins the collection of its own tower's model_version at start
(so a result's hits and its ``model_version`` always agree) and serves a rolled-out version after a
restart with the new export.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from worker.items import load_export
from worker.store import ItemStore, LiveCollection, StoreError

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    pass


def rollout(
    store: ItemStore,
    export_dir: str | Path,
    model_version: str | None = None,
    chunk: int = 10_000,
    timeout_s: float = 600.0,
    progress: bool = False,
    refill: bool = False,
) -> LiveCollection:
    """Fill ``model_version``'s collection from an export dir and point the alias at it."""
    version, dim, ids, vecs, created_ms = load_export(export_dir)
    if model_version is not None and model_version != version:
        raise RolloutError(
            f"--model-version {model_version!r} but {export_dir}/manifest.json says {version!r}"
        )
    ids, first = np.unique(ids, return_index=True)
    vecs = vecs[first]
    existed = store.collection_name(version) in store.list_collections()
    name = store.ensure_collection(version, dim)
    if existed and store.count(name) > 0 and not refill:
        # The stream may have updated or deleted rows since: refilling would revert them.
        log.info("%s already holds %d rows: not refilled (use --refill to overwrite)", name, store.count(name))
        ids = ids[:0]
    ts = np.full(len(ids), created_ms, np.int64)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ids), unit="items", desc=f"fill {name}")
    t0 = time.monotonic()
    for s in range(0, len(ids), chunk):
        store.upsert(name, ids[s : s + chunk], vecs[s : s + chunk], ts[s : s + chunk])
        if bar is not None:
            bar.update(min(chunk, len(ids) - s))
    if bar is not None:
        bar.close()
    deadline = time.monotonic() + timeout_s
    while True:  # searchable: every row counted (count(*) is Strong)
        n = store.count(name)
        if n >= len(ids):
            break
        if time.monotonic() > deadline:
            raise RolloutError(
                f"{name}: {n} of {len(ids)} rows searchable after {timeout_s}s; alias not switched"
            )
        time.sleep(0.5)
    old = store.live()
    store.set_alias(name)
    log.info(
        "rolled out %s: %d items in %.1fs; alias %s -> %s (was %s, kept until `items drop`)",
        version,
        len(ids),
        time.monotonic() - t0,
        store.cfg.alias,
        name,
        old.collection if old else "none",
    )
    return LiveCollection(name, version, dim)


def drop_version(store: ItemStore, model_version: str) -> str:
    name = store.collection_name(model_version)
    if name not in store.list_collections():
        raise StoreError(f"no collection {name} for model_version {model_version!r}")
    store.drop(name)
    return name
