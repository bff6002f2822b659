"""Model rollout for item vectors: fill the new version's collection, wait until it is searchable,
switch the alias atomically, announce the new model on the control topic (worker/model_watch.py: every
worker switches to it without a restart), and drop retired collections after a grace period (``gc``).

Searches that name the alias see either the old or the new collection, never a mix: Milvus resolves
the alias per request. A recall engine searches the collection of its own tower's model_version by name,
so a result's hits and its ``model_version`` always agree, before, during and after a switch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from worker import model_watch
from worker.items import load_export
from worker.model_watch import Announcement
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


def announce_live(settings: Any, store: ItemStore, live: LiveCollection, export_dir: str | Path) -> Announcement:
    """Tell every worker (worker/model_watch.py) to serve ``live`` from ``export_dir`` (made absolute: the
    workers resolve it, not this process). The version served before joins ``retired`` (for ``gc``)."""
    prev = model_watch.latest(settings)
    retired = list(prev.retired) if prev else []
    if prev is not None and prev.model_version != live.model_version and prev.model_version not in retired:
        retired.append(prev.model_version)
    retired = [v for v in retired if v != live.model_version]
    ann = Announcement(live.model_version, str(Path(export_dir).resolve()), store.count(live.collection),
                       int(time.time() * 1000), tuple(retired))
    model_watch.announce(settings, ann)
    return ann


def gc(settings: Any, store: ItemStore, grace_s: float) -> dict[str, Any]:
    """Drop the collections of retired versions once the live one has been live for ``grace_s`` (workers
    still finishing a batch of the old version meanwhile, or rolled back to it, find it there)."""
    ann = model_watch.latest(settings)
    if ann is None:
        return {"dropped": [], "why": "no model announced on the control topic"}
    live_for = time.time() - ann.ts / 1000
    if live_for < grace_s:
        return {"dropped": [], "why": f"{ann.model_version} live for {live_for:.0f}s < --grace-s {grace_s:g}"}
    live = store.live()
    names = set(store.list_collections())
    dropped = []
    for version in ann.retired:
        name = store.collection_name(version)
        if version != ann.model_version and name in names and (live is None or live.collection != name):
            store.drop(name)
            dropped.append(name)
    if ann.retired:  # forget them, so the next gc has nothing left to do (the workers ignore a same-version record)
        model_watch.announce(settings, Announcement(ann.model_version, ann.export_dir, ann.rows, ann.ts))
    log.info("gc: dropped %s (live: %s)", dropped or "nothing", ann.model_version)
    return {"dropped": dropped, "live": ann.model_version}


def drop_version(store: ItemStore, model_version: str) -> str:
    name = store.collection_name(model_version)
    if name not in store.list_collections():
        raise StoreError(f"no collection {name} for model_version {model_version!r}")
    store.drop(name)
    return name
