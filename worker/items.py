"""The live item-vector cache every worker keeps, and the follower that keeps it live from
[item-embeddings] (its wire format: mind_recall/item_wire.py)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mind_recall.item_wire import ItemEvent, decode_item_event
from worker.outage import Outage

log = logging.getLogger(__name__)

# -- the live cache -----------------------------------------------------------------------------
class ItemCache:
    """Thread-safe item_id -> vector map for all items of one model version.

    Ids index a direct-address slot table (dense catalogues: 4 bytes per id up to the largest id);
    ids past ``_DIRECT_MAX`` go to a dict. Vectors live in one growable float32 matrix; a deleted
    item's slot is freed and reused. Last write wins by event ts, deletes included (a replayed older
    upsert never resurrects a newer delete).
    """

    _DIRECT_MAX = 1 << 26  # 64M ids -> 256 MB slot table at most

    def __init__(self, model_version: str, dim: int, capacity: int = 1024) -> None:
        self.model_version = model_version
        self.dim = dim
        self._lock = threading.RLock()
        self._vecs = np.zeros((max(capacity, 16), dim), np.float32)
        self._ts = np.zeros(len(self._vecs), np.int64)
        self._slot = np.full(1024, -1, np.int32)  # direct table; -1 = absent
        self._far: dict[int, int] = {}  # ids >= _DIRECT_MAX
        self._free: list[int] = []
        self._used = 0  # high-water mark of slots
        self._n = 0
        self._deleted_ts: dict[int, int] = {}  # ts of the last delete per id (for ordering only)

    def __len__(self) -> int:
        return self._n

    # slot table -------------------------------------------------------------------------------
    def _get_slot(self, item_id: int) -> int:
        if item_id < self._DIRECT_MAX:
            return int(self._slot[item_id]) if item_id < len(self._slot) else -1
        return self._far.get(item_id, -1)

    def _set_slot(self, item_id: int, slot: int) -> None:
        if item_id < self._DIRECT_MAX:
            if item_id >= len(self._slot):
                grown = np.full(max(item_id + 1, 2 * len(self._slot)), -1, np.int32)
                grown[: len(self._slot)] = self._slot
                self._slot = grown
            self._slot[item_id] = slot
        elif slot < 0:
            self._far.pop(item_id, None)
        else:
            self._far[item_id] = slot

    def _new_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == len(self._vecs):
            n = 2 * len(self._vecs)
            vecs = np.zeros((n, self.dim), np.float32)
            vecs[: self._used] = self._vecs[: self._used]
            ts = np.zeros(n, np.int64)
            ts[: self._used] = self._ts[: self._used]
            self._vecs, self._ts = vecs, ts
        self._used += 1
        return self._used - 1

    # writes -----------------------------------------------------------------------------------
    def load(self, ids: np.ndarray, vectors: np.ndarray, ts: np.ndarray | int = 0) -> None:
        """Bulk load (start-up); same last-write-wins rule as :meth:`apply`."""
        ids = np.asarray(ids, np.int64)
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"load: vectors {vectors.shape} do not match {len(ids)} ids x dim {self.dim}")
        ts_arr = np.broadcast_to(np.asarray(ts, np.int64), ids.shape)
        with self._lock:
            need = self._used + len(ids)
            if need > len(self._vecs):
                vecs = np.zeros((need, self.dim), np.float32)
                vecs[: self._used] = self._vecs[: self._used]
                t = np.zeros(need, np.int64)
                t[: self._used] = self._ts[: self._used]
                self._vecs, self._ts = vecs, t
            for i, item_id in enumerate(ids.tolist()):
                self._put(item_id, vectors[i], int(ts_arr[i]))

    def _put(self, item_id: int, vector: np.ndarray, ts: int) -> bool:
        if ts < self._deleted_ts.get(item_id, -1):
            return False
        slot = self._get_slot(item_id)
        if slot < 0:
            slot = self._new_slot()
            self._set_slot(item_id, slot)
            self._n += 1
        elif ts < self._ts[slot]:
            return False
        self._vecs[slot] = vector
        self._ts[slot] = ts
        self._deleted_ts.pop(item_id, None)
        return True

    def _remove(self, item_id: int, ts: int) -> bool:
        slot = self._get_slot(item_id)
        if slot >= 0:
            if ts < self._ts[slot]:
                return False
            self._set_slot(item_id, -1)
            self._free.append(slot)
            self._n -= 1
        self._deleted_ts[item_id] = max(ts, self._deleted_ts.get(item_id, ts))
        return True

    def apply(self, event: ItemEvent) -> bool:
        """Apply an event of this cache's version (deletes of any version); True if state changed."""
        with self._lock:
            if event.vector is None:
                return self._remove(event.item_id, event.ts)
            if event.model_version != self.model_version or event.vector.shape != (self.dim,):
                return False
            return self._put(event.item_id, event.vector, event.ts)

    # reads ------------------------------------------------------------------------------------
    def _slots(self, ids: np.ndarray) -> np.ndarray:
        flat = np.asarray(ids, np.int64).ravel()
        slots = np.full(flat.shape, -1, np.int64)
        table = self._slot
        direct = (flat >= 0) & (flat < len(table))
        slots[direct] = table[flat[direct]]
        if self._far:
            for i in np.nonzero(flat >= self._DIRECT_MAX)[0].tolist():
                slots[i] = self._far.get(int(flat[i]), -1)
        return slots

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (..., D) with zeros where missing, found mask (...)) for ids of any shape."""
        ids = np.asarray(ids, np.int64)
        with self._lock:
            slots = self._slots(ids)
            found = slots >= 0
            out = np.zeros((slots.size, self.dim), np.float32)
            out[found] = self._vecs[slots[found]]
        return out.reshape(*ids.shape, self.dim), found.reshape(ids.shape)

    def is_live(self, ids: np.ndarray) -> np.ndarray:
        """False for deleted or never-seen ids: the read path drops such hits."""
        ids = np.asarray(ids, np.int64)
        with self._lock:
            return (self._slots(ids) >= 0).reshape(ids.shape)

    def nbytes(self) -> int:
        """Memory held by the cache's arrays (vectors, ts, slot table), without the dicts."""
        return int(self._vecs.nbytes + self._ts.nbytes + self._slot.nbytes)


def load_export(export_dir: str | Path) -> tuple[str, int, np.ndarray, np.ndarray, int]:
    """(model_version, dim, ids, vectors, created_ms) from an export dir (manifest.json + items.npz)."""
    d = Path(export_dir)
    manifest_path = d / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no export manifest (run `mind-recall export --out {d}`)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    from model.tower import load_items

    ids, vecs = load_items(str(d))
    ids = np.asarray(ids, np.int64)
    vecs = np.asarray(vecs, np.float32)
    dim = int(manifest.get("dim", vecs.shape[1]))
    if vecs.ndim != 2 or vecs.shape != (len(ids), dim):
        raise ValueError(f"{d}/items.npz: vectors {vecs.shape} do not match {len(ids)} ids x dim {dim}")
    created = manifest.get("created_ts", 0)
    created_ms = int(created * 1000) if isinstance(created, float) or created < 10**11 else int(created)
    return str(manifest["model_version"]), dim, ids, vecs, created_ms


class ItemFollower:
    """Keeps an ItemCache live from [item-embeddings]: every partition assigned manually, no group.

    It reads the topic from the beginning (the topic is compacted, so that is the current catalogue)
    and applies events by ts; ``caught_up`` is set once it reached the end offsets seen at start.
    """

    def __init__(self, settings: Any, cache: ItemCache, metrics: Any = None) -> None:
        self.settings = settings
        self.cache = cache
        self.metrics = metrics
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="item-follower", daemon=True)
        self.error: BaseException | None = None  # the last transient error (cleared once reading again)
        self.fatal: BaseException | None = None  # a bug or an outage past the limit: the follower stopped

    def start(self) -> ItemFollower:
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float | None = None) -> bool:
        return self.caught_up.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        """Follow the topic until stopped. A Kafka outage is waited out with backoff from the last applied
        offsets (worker/outage.py), so the cache never silently freezes; a bug, or an outage past
        worker.outage_limit_s, stops the follower with ``fatal`` set (the App then exits: a cache that no
        longer follows deletes must not go on serving)."""
        from worker import kafka_io

        s = self.settings
        topic = s.topics.item_embeddings
        positions: dict[Any, int] = {}  # next offset per partition, kept across reconnects
        outage = Outage(s.worker.outage_limit_s, s.worker.retry_backoff_s, "item follower (kafka)")
        while not self._stop.is_set():
            consumer = None
            try:
                kafka_io.ensure_item_topic(s)
                consumer = kafka_io.make_reader(s, fetch_max_wait_ms=500)
                parts = kafka_io.topic_partitions(consumer, topic)
                consumer.assign_from({tp: positions.get(tp) for tp in parts})  # None: from the beginning
                end = {tp: high for tp, (_low, high) in consumer.watermarks(parts).items()}
                while not self._stop.is_set():
                    for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
                        for r in records:
                            ev = decode_item_event(r, dim=self.cache.dim, max_record_bytes=s.worker.max_record_bytes)
                            if isinstance(ev, ItemEvent):
                                self.cache.apply(ev)
                        positions[tp] = records[-1].offset + 1
                    if not self.caught_up.is_set() and all(consumer.read_up_to(tp, end[tp]) for tp in parts):
                        self.caught_up.set()
                        log.info("item cache caught up: %d items", len(self.cache))
                    if self.metrics is not None:
                        self.metrics.item_cache_items.set(len(self.cache))
                    if self.error is not None:
                        self.error = None
                        outage.ok()
            except Exception as e:
                self.error = e
                try:
                    delay = outage.failed(e)
                except BaseException as fatal:  # a bug, or past the outage limit
                    self.fatal = fatal
                    log.error("item follower stopped: %s: %s", type(fatal).__name__, fatal, exc_info=fatal)
                    return
                self._stop.wait(delay)
            finally:
                if consumer is not None:
                    consumer.close()


def start_item_cache(
    settings: Any, export_dir: str | Path | None, metrics: Any = None, wait_s: float | None = 60.0
) -> tuple[ItemCache, ItemFollower]:
    """Load the cache (export dir, else the live Milvus collection) and start its follower.

    Blocks until the follower caught up with the topic (at most ``wait_s``).
    """
    if export_dir is not None:
        version, dim, ids, vecs, created_ms = load_export(export_dir)
        cache = ItemCache(version, dim, capacity=len(ids) + 1024)
        cache.load(ids, vecs, created_ms)
    else:
        from worker.store import ItemStore

        store = ItemStore(settings.milvus, metrics)
        try:
            live = store.live()
            if live is None:
                raise RuntimeError(
                    f"no live item collection (alias {settings.milvus.alias}) and no export dir"
                )
            cache = ItemCache(
                live.model_version, live.dim, capacity=max(store.count(live.collection), 1) + 1024
            )
            for ids, vecs, ts in store.iter_all(live.collection):
                cache.load(ids, vecs, ts)
        finally:
            store.close()
    log.info(
        "item cache: %d items of model_version %s (dim %d, %.1f MB)",
        len(cache),
        cache.model_version,
        cache.dim,
        cache.nbytes() / 1e6,
    )
    follower = ItemFollower(settings, cache, metrics).start()
    if wait_s and not follower.wait_caught_up(wait_s):
        log.warning("item cache not caught up after %.0fs; serving and catching up", wait_s)
    return cache, follower
