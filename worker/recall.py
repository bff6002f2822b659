"""The recall engine: histories -> item vectors -> ONE tower forward -> ONE search -> merge.

Pure orchestration over three collaborators, so the streaming worker, the HTTP API and the
benchmarks share it and unit tests can use fakes:
- a tower (model.tower.UserTower): ``encode(hist_vectors [B,L,D], lengths [B]) -> (interests [B,K,D], n [B])``
- ``search(queries [n,D], topn) -> (ids [n,topn] (-1 pad), scores)``: ItemStore.search bound to the
  tower's model-version collection, or model.evaluation.exact_search
- an item lookup (worker.items.ItemCache or :class:`ArrayItems`): ``lookup(ids)``, ``is_live(ids)``
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.merge import Candidate, merge_batch

log = logging.getLogger(__name__)

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
MAX_SEARCH_TOPN = 16384  # Milvus' topk limit
SEARCH_MARGIN = 2  # extra hits per interest on the first try (a retry covers what filtering removes)
DEAD_MARGIN = 16  # extra popular items looked at for a cold-start list


class Tower(Protocol):
    model_version: str
    dim: int
    k: int
    maxlen: int

    def encode(self, hist_vectors: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class ItemLookup(Protocol):
    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def is_live(self, ids: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Query:
    user_id: int
    top_k: int
    history: np.ndarray | None  # int64 item ids, oldest first; None or empty: cold start


@dataclass(frozen=True)
class Recall:
    items: list[Candidate]
    source: str  # "mind" | "cold_start"
    n_interests: int


@dataclass
class Encoded:
    """A batch after its tower forward (``RecallEngine.encode``), waiting for its search and merge."""

    queries: Sequence[Query]
    hists: list[np.ndarray]
    usable: list[int]  # queries with at least one known history item
    interests: np.ndarray  # [len(usable), K, D]
    n_int: np.ndarray  # [len(usable)]
    stage_s: dict[str, float]


class ArrayItems:
    """Item vectors held in sorted numpy arrays (an export's items.npz); every known id is live."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, model_version: str = "") -> None:
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        self.vectors = np.ascontiguousarray(vectors[order], dtype=np.float32)
        self.model_version = model_version
        self.dim = int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.ids.size)

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, ids), 0, max(self.ids.size - 1, 0))
        found = (self.ids[pos] == ids) if self.ids.size else np.zeros(ids.shape, dtype=bool)
        return pos, found

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, found = self._find(ids)
        vecs = self.vectors[pos] if self.ids.size else np.zeros((*pos.shape, self.dim), np.float32)
        vecs[~found] = 0.0
        return vecs, found

    def is_live(self, ids: np.ndarray) -> np.ndarray:
        return self._find(ids)[1]


class RecallEngine:
    """Batched recall for a list of queries; results are in query order and all of one model version."""

    def __init__(
        self,
        tower: Tower,
        search: SearchFn,
        items: ItemLookup,
        popular: np.ndarray,
        *,
        exclude_seen: bool = True,
        metrics: Any = None,
        min_topn: int = 0,
    ) -> None:
        items_version = getattr(items, "model_version", "")
        if items_version and items_version != tower.model_version:
            raise ValueError(f"item vectors are of model version {items_version!r}, the tower {tower.model_version!r}")
        self.tower, self.search, self.items = tower, search, items
        self.popular = np.asarray(popular, dtype=np.int64)
        self.exclude_seen = exclude_seen
        self.metrics = metrics
        # The first search asks for up to this many hits per interest (at most 4x what it needs):
        # ItemStore.free_topn(), the ef an HNSW search visits whatever its limit, so they cost the server
        # nothing more and spare most second searches.
        self.min_topn = max(0, int(min_topn))
        self.stage_s: dict[str, float] = {}  # last batch, for benchmarks and logs
        self.retried = 0  # users searched a second time (see _search_and_merge)

    @property
    def model_version(self) -> str:
        return self.tower.model_version

    def _stage(self, stages: dict[str, float], name: str, t0: float) -> float:
        t1 = time.perf_counter()
        stages[name] = t1 - t0
        if self.metrics is not None:
            self.metrics.recall_stage.labels(stage=name).observe(t1 - t0)
        return t1

    def recall(self, queries: Sequence[Query]) -> list[Recall]:
        return self.search_merge(self.encode(queries))

    def encode(self, queries: Sequence[Query]) -> Encoded:
        """Stage 1 of :meth:`recall`: histories -> item vectors -> ONE tower forward. Stage 2,
        :meth:`search_merge`, may run meanwhile for the previous batch in another thread (the
        worker overlaps the two: the tower computes while the previous batch waits on Milvus)."""
        stages: dict[str, float] = {}
        t = time.perf_counter()
        L, D = self.tower.maxlen, self.tower.dim
        # 1. history ids -> vectors in ONE lookup; unknown ids are dropped, the last L known kept.
        hists = [np.asarray(q.history if q.history is not None else (), dtype=np.int64) for q in queries]
        sizes = np.array([h.size for h in hists])
        flat = np.concatenate(hists) if sizes.sum() else np.zeros(0, np.int64)
        vecs, found = self.items.lookup(flat) if flat.size else (np.zeros((0, D), np.float32), np.zeros(0, bool))
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        usable: list[int] = []
        hv_rows: list[np.ndarray] = []
        for i in range(len(queries)):
            f = found[bounds[i] : bounds[i + 1]]
            v = vecs[bounds[i] : bounds[i + 1]][f][-L:]
            if v.shape[0]:
                usable.append(i)
                hv_rows.append(v)
        t = self._stage(stages, "history", t)
        if not usable:
            empty = np.zeros((0, self.tower.k, D), np.float32)
            return Encoded(queries, hists, usable, empty, np.zeros(0, np.int64), stages)
        hv = np.zeros((len(usable), L, D), dtype=np.float32)
        lengths = np.zeros(len(usable), dtype=np.int64)
        for r, v in enumerate(hv_rows):
            hv[r, : v.shape[0]] = v
            lengths[r] = v.shape[0]
        # 2. ONE forward for the batch.
        interests, n_int = self.tower.encode(hv, lengths)
        n_int = np.clip(np.asarray(n_int, dtype=np.int64), 1, interests.shape[1])
        self._stage(stages, "encode", t)
        return Encoded(queries, hists, usable, interests, n_int, stages)

    def search_merge(self, enc: Encoded) -> list[Recall]:
        """Stage 2 of :meth:`recall`: ONE search for every used interest of every user, then the per-user
        merge (the same function evaluation uses; see _search_and_merge for how exactness is kept), and
        the cold-start list for users without a usable history."""
        queries, hists = enc.queries, enc.hists
        out: list[Recall | None] = [None] * len(queries)
        if enc.usable:
            self._search_and_merge(queries, enc.usable, hists, enc.interests, enc.n_int, out, enc.stage_s)
        for i, q in enumerate(queries):
            if out[i] is None:
                out[i] = Recall(self.cold_start(q.top_k, hists[i]), "cold_start", 0)
        self.stage_s = enc.stage_s  # the last batch's, for benchmarks and logs
        return [r for r in out if r is not None]

    def _search_and_merge(
        self,
        queries: Sequence[Query],
        usable: list[int],
        hists: list[np.ndarray],
        interests: np.ndarray,
        n_int: np.ndarray,
        out: list[Recall | None],
        stages: dict[str, float],
    ) -> None:
        """Search top-N per interest and merge, exactly: a merged list is exact when it holds top_k
        items and its last score is >= the last score of every interest list that came back full
        (anything a list missed scores no higher than that). Excluded (seen) and dead ids can break
        this; those users, and only those, are searched again with a larger N in one more call.
        So N starts near top_k (Milvus Lite's cost grows with queries x N) and stays exact."""
        b, K, D = interests.shape
        start = np.r_[0, np.cumsum(n_int)]
        rows = np.concatenate([np.arange(int(n)) + r * K for r, n in enumerate(n_int)])
        qvecs = np.ascontiguousarray(interests.reshape(b * K, D)[rows])
        seen = [np.unique(hists[i]).size if self.exclude_seen else 0 for i in usable]
        need = max(queries[i].top_k + (sn + 3) // 4 for i, sn in zip(usable, seen, strict=True)) + SEARCH_MARGIN
        # up to min_topn hits are free on the server; capped at 4x what is needed, as parsing and merging
        # them is not free here (an ef set high for recall would otherwise multiply the client's work)
        topn = min(max(need, min(self.min_topn, 4 * need)), MAX_SEARCH_TOPN)
        todo = list(range(len(usable)))
        search_s = merge_s = 0.0
        while todo:
            t0 = time.perf_counter()
            sel = np.concatenate([np.arange(start[r], start[r + 1]) for r in todo])
            raw_ids, scores = self.search(qvecs[sel], topn)
            raw_ids = np.asarray(raw_ids, dtype=np.int64)
            scores = np.asarray(scores, dtype=np.float32)
            ids = raw_ids.copy()
            dead = (ids >= 0) & ~self.items.is_live(np.maximum(ids, 0))
            ids[dead] = -1  # e.g. deleted items a server still returns until a flush
            t1 = time.perf_counter()
            search_s += t1 - t0
            # Each user's n rows into a [users, K, topn] block (padding -1) for ONE merge_batch call.
            counts = n_int[todo]
            user = np.repeat(np.arange(len(todo)), counts)
            row = np.arange(user.size) - np.repeat(np.cumsum(counts) - counts, counts)
            block_ids = np.full((len(todo), K, ids.shape[1]), -1, dtype=np.int64)  # a search may return < topn
            block_scores = np.full(block_ids.shape, -np.inf, dtype=np.float32)
            block_ids[user, row], block_scores[user, row] = ids, scores
            # the last score of every list that came back full (-inf where none did)
            full_last = np.where(raw_ids[:, -1] >= 0, scores[:, -1], -np.inf)
            bar = np.full(len(todo), -np.inf, dtype=np.float32)
            np.maximum.at(bar, user, full_last)
            merged = merge_batch(
                block_ids,
                block_scores,
                [queries[usable[r]].top_k for r in todo],
                counts,
                [hists[usable[r]] for r in todo] if self.exclude_seen else None,
            )
            retry: list[int] = []
            for t, r in enumerate(todo):
                items, q = merged[t], queries[usable[r]]
                exact = bar[t] == -np.inf or (len(items) == q.top_k and items[-1].score >= float(bar[t]))
                if exact or topn >= MAX_SEARCH_TOPN:
                    out[usable[r]] = Recall(items, "mind", int(counts[t]))
                else:
                    retry.append(r)
            merge_s += time.perf_counter() - t1
            self.retried += len(retry)
            todo = retry
            topn = min(2 * topn + max((seen[r] for r in retry), default=0), MAX_SEARCH_TOPN)
        for name, secs in (("search", search_s), ("merge", merge_s)):
            stages[name] = secs
            if self.metrics is not None:
                self.metrics.recall_stage.labels(stage=name).observe(secs)

    def search_size(self, queries: Sequence[Query]) -> tuple[int, int]:
        """(query vectors, hits per vector) of the first search :meth:`recall` would send for ``queries``
        (every history counted as usable, K interests each): Milvus Lite's time grows with their product
        (4096 x 602 took ~90 s), so the HTTP API budgets it (http.max_recall_work)."""
        if not queries:
            return 0, 0
        seen = [np.unique(q.history).size if self.exclude_seen and q.history is not None else 0 for q in queries]
        need = max(q.top_k + (sn + 3) // 4 for q, sn in zip(queries, seen, strict=True)) + SEARCH_MARGIN
        return len(queries) * int(self.tower.k), min(max(need, min(self.min_topn, 4 * need)), MAX_SEARCH_TOPN)

    def warm_up(self) -> None:
        """One recall of a popular-items history before serving: it opens the Milvus connection, loads
        the collection and runs the tower, which otherwise made the first real requests 0.3-0.7 s slow."""
        hist = self.popular[: self.tower.maxlen]
        if hist.size:
            self.recall([Query(-1, 10, hist)])

    def cold_start(self, top_k: int, seen: np.ndarray) -> list[Candidate]:
        """Popular live items (minus seen ones when exclude_seen); score 0, interest -1."""
        pop = self.popular[: top_k + (seen.size if self.exclude_seen else 0) + DEAD_MARGIN * 4]
        keep = self.items.is_live(pop) if pop.size else np.zeros(0, bool)
        if self.exclude_seen and seen.size:
            keep &= ~np.isin(pop, seen)
        return [Candidate(int(i), 0.0, -1) for i in pop[keep][:top_k]]


def load_export_items(export_dir: str | Path) -> ArrayItems:
    """The export's item vectors as an :class:`ArrayItems` (where no live ItemCache runs)."""
    from worker.items import load_export

    version, _, ids, vectors, _ = load_export(export_dir)
    return ArrayItems(ids, vectors, version)


def load_popular(export_dir: str | Path) -> np.ndarray:
    from model.tower import load_popular as _load

    return np.asarray(_load(export_dir), dtype=np.int64)


def store_search(store: Any, collection: str) -> SearchFn:
    """ItemStore.search pinned to one collection, so results never mix model versions."""

    def search(queries: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
        return store.search(queries, topn, collection=collection)  # type: ignore[no-any-return]

    return search


class SearchDeadline(TimeoutError):
    """A chunked search ran past its deadline: the rest of its chunks were not sent."""


def chunked_search(search: SearchFn, chunk: int, deadline: Callable[[], float | None]) -> SearchFn:
    """``search`` in calls of at most ``chunk`` queries, one after another, checking ``deadline()`` (a
    ``time.monotonic()`` value, or None for none) before each: one big HTTP batch then never queues a
    giant search on Milvus (Lite kept working ~90 s after a 4096-query call timed out) and the Kafka
    path's searches get their turn between the chunks."""

    def search_chunks(queries: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
        parts_ids, parts_scores = [], []
        for s in range(0, max(len(queries), 1), chunk):
            end = deadline()
            if end is not None and time.monotonic() > end:
                raise SearchDeadline(f"search stopped after {s} of {len(queries)} queries: deadline passed")
            ids, scores = search(queries[s : s + chunk], topn)
            parts_ids.append(np.asarray(ids))
            parts_scores.append(np.asarray(scores))
        return np.concatenate(parts_ids), np.concatenate(parts_scores)

    return search_chunks


def load_into_store(
    store: Any, export_dir: str | Path, set_alias: bool = True, chunk: int = 20000, *, restore: bool = False
) -> tuple[str, int]:
    """Fill an export's item vectors into its model version's collection; returns (collection, rows
    written).

    By default (``--load-items``, compose's model-init) only a new or empty collection is filled: once the
    item stream has updated or deleted rows, a refill from the export would bring deleted items back and
    revert updates (a restart with --load-items must be safe). ``restore`` (``/rec/insert_data``) writes
    every export row whose id the collection lacks, e.g. after a drop and a streamed upsert re-created it
    with one row; rows present are kept as they are (streamed updates are not reverted)."""
    items = load_export_items(export_dir)
    coll = store.collection_name(items.model_version)
    exists = coll in store.list_collections()
    coll = store.ensure_collection(items.model_version, items.dim)
    held = store.count(coll) if exists else 0
    if held == 0:
        todo = np.arange(len(items))
    elif restore:
        todo = np.flatnonzero(~np.isin(items.ids, store.ids(coll)))
    else:
        todo = np.zeros(0, np.int64)
        log.info("%s already holds %d rows (export: %d): left as it is (only a new or empty collection is filled)",
                 coll, held, len(items))
    now = np.full(chunk, int(time.time() * 1000), dtype=np.int64)
    for s in range(0, todo.size, chunk):
        rows = todo[s : s + chunk]
        store.upsert(coll, items.ids[rows], items.vectors[rows], now[: rows.size])
    if todo.size:
        log.info("loaded %d item vectors of %d into %s", todo.size, len(items), coll)
    if set_alias:
        store.set_alias(coll)
    return coll, int(todo.size)


class PerRequestEngine(RecallEngine):
    """The original service's path, kept as the benchmark baseline: per request one tower forward
    and one search call per interest (no batching at all). Same answers as :class:`RecallEngine`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        batched = self.search

        def per_interest(qs: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
            parts = [batched(qs[i : i + 1], topn) for i in range(qs.shape[0])]  # K separate calls
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        self.search = per_interest  # wrapped once: no state changes per call, safe across threads

    def encode(self, queries: Sequence[Query]) -> Encoded:
        """Nothing here: the baseline does all of a request's work (its own forward, K searches) in
        :meth:`search_merge`, so a worker that runs the two stages apart batches and overlaps nothing."""
        return Encoded(queries, [], [], np.zeros((0, 0, 0), np.float32), np.zeros(0, np.int64), {})

    def search_merge(self, enc: Encoded) -> list[Recall]:
        return [r for q in enc.queries for r in RecallEngine.search_merge(self, RecallEngine.encode(self, [q]))]
