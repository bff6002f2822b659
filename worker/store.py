"""Item-vector store on Milvus: the only module that imports pymilvus.

One collection per model version (``milvus.collection_prefix`` + sanitized version) and an alias
(``milvus.alias``) naming the live one, so a rollout fills a new collection and switches the alias
atomically. The model version is kept in the collection's properties, so ``live()`` can name it.

Every failed call raises :class:`StoreError` and drops the client: the next call reconnects (a
restarted server needs a new connection and a fresh ``load_collection``). Callers own the retry
policy (the item writer backs off and pauses its partitions).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from mind_recall.settings import Milvus
from worker.metrics import Metrics

log = logging.getLogger(__name__)

ID_FIELD = "item_id"
VECTOR_FIELD = "embedding"
TS_FIELD = "updated_ts"
VERSION_PROPERTY = "mind_recall.model_version"
METRIC = "IP"
# Milvus caps one request at 64 MiB by default: stay far below for any dim.
_MAX_ROWS_PER_CALL = 10_000

T = TypeVar("T")


class StoreError(RuntimeError):
    """Milvus unavailable or a call failed; callers retry with backoff."""


class SchemaMismatch(StoreError):
    """An existing collection has another dim or metric: a startup error, not a retry."""


class LiveCollection(NamedTuple):
    collection: str
    model_version: str
    dim: int


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


class ItemStore:
    """Thin, typed wrapper over ``pymilvus.MilvusClient`` for item vectors (thread-safe)."""

    def __init__(self, cfg: Milvus, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._lock = threading.RLock()
        self._client: Any = None
        self._loaded: set[str] = set()
        self._dims: dict[str, int] = {}
        self._direct: bool | None = None  # _search_direct works with this pymilvus (None: not tried yet)

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> Any:
        from pymilvus import MilvusClient

        uri = self.cfg.uri
        if not _is_remote(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            return MilvusClient(uri, timeout=self.cfg.timeout_s)
        return MilvusClient(uri=uri, token=self.cfg.token or "", timeout=self.cfg.timeout_s)

    def _reset(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._loaded.clear()
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken client may fail too
                client.close()

    @contextmanager
    def _timed(self, op: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.metrics is not None and op:
                self.metrics.milvus_seconds.labels(op=op).observe(time.perf_counter() - t0)

    def _call(self, op: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)``; any failure becomes StoreError and drops the connection."""
        try:
            with self._timed(op):
                with self._lock:
                    if self._client is None:
                        self._client = self._connect()
                    client = self._client
                return fn(client)
        except StoreError:
            raise
        except Exception as e:
            if self.metrics is not None and op:
                self.metrics.milvus_errors.labels(op=op).inc()
            self._reset()
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StoreError(f"milvus {op or 'call'} failed ({self._where()}): {msg}") from e

    def _where(self) -> str:
        return self.cfg.uri if not _is_remote(self.cfg.uri) else self.cfg.uri.split("@")[-1]

    def _ensure_loaded(self, client: Any, collection: str) -> None:
        if collection not in self._loaded:
            client.load_collection(collection)
            self._loaded.add(collection)

    # -- collections ------------------------------------------------------------------------
    def collection_name(self, model_version: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_]", "_", model_version)
        name = self.cfg.collection_prefix + safe
        if not re.match(r"[A-Za-z_]", name):
            name = "_" + name
        return name[:255]

    def ensure_collection(self, model_version: str, dim: int) -> str:
        """Create the version's collection if missing, check dim and metric, load it."""
        if not model_version:
            raise ValueError("model_version must be a non-empty string")
        if dim <= 0:
            raise ValueError(f"dim must be > 0, got {dim}")
        name = self.collection_name(model_version)

        def run(client: Any) -> str:
            from pymilvus import DataType, MilvusClient

            if client.has_collection(name):
                self._check_schema(client, name, model_version, dim)
            else:
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
                schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
                schema.add_field(TS_FIELD, DataType.INT64)
                index = client.prepare_index_params()
                index.add_index(
                    field_name=VECTOR_FIELD,
                    index_type=self.cfg.index_type,
                    metric_type=METRIC,
                    params=dict(self.cfg.index_params),
                )
                client.create_collection(
                    name,
                    schema=schema,
                    index_params=index,
                    consistency_level=self.cfg.consistency_level,
                    properties={VERSION_PROPERTY: model_version},
                )
                log.info(
                    "created collection %s (model_version=%s, dim=%d, index=%s)",
                    name,
                    model_version,
                    dim,
                    self.cfg.index_type,
                )
            self._ensure_loaded(client, name)
            self._dims[name] = dim
            return name

        return self._call("", run)

    def _check_schema(self, client: Any, name: str, model_version: str, dim: int) -> None:
        have_dim, have_version = self._describe(client, name)
        if have_dim != dim:
            raise SchemaMismatch(
                f"collection {name} exists with dim {have_dim}, "
                f"model_version {model_version!r} needs dim {dim}: "
                f"drop it (mind-recall items drop --model-version {model_version}) or use another version"
            )
        if have_version and have_version != model_version:
            raise SchemaMismatch(
                f"collection {name} holds model_version {have_version!r}, not {model_version!r}"
            )
        for idx in client.list_indexes(name):
            metric = client.describe_index(name, idx).get("metric_type")
            if metric and metric != METRIC:
                raise SchemaMismatch(f"collection {name} uses metric {metric}, the model scores by {METRIC}")

    @staticmethod
    def _describe(client: Any, name: str) -> tuple[int, str]:
        desc = client.describe_collection(name)
        dim = 0
        for f in desc.get("fields", []):
            if f.get("name") == VECTOR_FIELD:
                dim = int(f.get("params", {}).get("dim", 0))
        version = str(desc.get("properties", {}).get(VERSION_PROPERTY, ""))
        return dim, version

    def describe(self, collection: str) -> LiveCollection:
        """Dim and model version of an existing collection."""
        dim, version = self._call("", lambda c: self._describe(c, collection))
        return LiveCollection(collection, version, dim)

    def versions(self) -> dict[str, LiveCollection]:
        """model_version -> collection for every item collection (the writer's routing table)."""
        out: dict[str, LiveCollection] = {}
        for name in self.list_collections():
            info = self.describe(name)
            if info.model_version:
                out[info.model_version] = info
        return out

    def live(self) -> LiveCollection | None:
        """The collection the alias points to, or None when no alias exists yet."""

        def run(client: Any) -> LiveCollection | None:
            if self.cfg.alias not in client.list_aliases().get("aliases", []):
                return None
            name = client.describe_alias(self.cfg.alias)["collection_name"]
            dim, version = self._describe(client, name)
            return LiveCollection(name, version, dim)

        return self._call("", run)

    def set_alias(self, collection: str) -> None:
        """Point the alias at ``collection``: created, or switched atomically by Milvus."""

        def run(client: Any) -> None:
            if self.cfg.alias in client.list_aliases().get("aliases", []):
                client.alter_alias(collection, self.cfg.alias)
            else:
                client.create_alias(collection, self.cfg.alias)
            self._ensure_loaded(client, collection)

        self._call("", run)
        log.info("alias %s -> %s", self.cfg.alias, collection)

    def list_collections(self) -> list[str]:
        names = self._call("", lambda c: list(c.list_collections()))
        return sorted(n for n in names if n.startswith(self.cfg.collection_prefix))

    def drop(self, collection: str, *, force: bool = False) -> None:
        """Drop a collection; refuses the live one (switch the alias first) unless ``force``
        (then the alias is dropped with it: the HTTP API's /rec/drop)."""
        live = self.live()
        is_live = live is not None and live.collection == collection
        if is_live and not force:
            raise StoreError(f"{collection} is live (alias {self.cfg.alias}); roll out another version first")

        def run(client: Any) -> None:
            if is_live:
                client.drop_alias(self.cfg.alias)
            client.drop_collection(collection)
            self._loaded.discard(collection)
            self._dims.pop(collection, None)

        self._call("", run)

    # -- data -------------------------------------------------------------------------------
    def _target(self, collection: str | None) -> str:
        return collection if collection is not None else self.cfg.alias

    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray, updated_ts: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        updated_ts = np.asarray(updated_ts, dtype=np.int64)
        if vectors.ndim != 2 or len(vectors) != len(ids) or len(updated_ts) != len(ids):
            raise ValueError(
                f"upsert: ids {ids.shape}, vectors {vectors.shape}, ts {updated_ts.shape} disagree"
            )
        if not len(ids):
            return
        id_list, ts_list = ids.tolist(), updated_ts.tolist()

        def run(client: Any) -> None:
            for s in range(0, len(id_list), _MAX_ROWS_PER_CALL):
                rows = [
                    {ID_FIELD: id_list[i], VECTOR_FIELD: vectors[i], TS_FIELD: ts_list[i]}
                    for i in range(s, min(s + _MAX_ROWS_PER_CALL, len(id_list)))
                ]
                client.upsert(collection, rows)

        self._call("upsert", run)

    def delete(self, collection: str, ids: np.ndarray) -> None:
        id_list = np.asarray(ids, dtype=np.int64).tolist()
        if id_list:
            self._call("delete", lambda c: c.delete(collection, ids=id_list))

    def free_topn(self) -> int:
        """Hits per query a search returns at no extra cost: an HNSW search visits ``ef`` candidates
        whatever its limit (``ef`` >= limit), so asking for ef instead of top_k + a few is free and spares
        the engine's second search for users whose seen items took hits away (docs/recall.md). 0 for
        other indexes (FLAT on Lite: the cost grows with the limit)."""
        if self.cfg.index_type.upper() != "HNSW":
            return 0
        return int(self.cfg.search_params.get("ef", 0))

    def search(
        self, queries: np.ndarray, top_k: int, collection: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All queries in ``milvus.search_chunk``-sized calls that run concurrently (async gRPC), read
        straight from the response into numpy; ids -1 and scores -inf pad rows with fewer hits."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2:
            raise ValueError(f"search: queries must be (n, D), got {q.shape}")
        ids = np.full((len(q), top_k), -1, dtype=np.int64)
        scores = np.full((len(q), top_k), -np.inf, dtype=np.float32)
        if not len(q) or top_k <= 0:
            return ids, scores
        target = self._target(collection)
        search_params = dict(self.cfg.search_params)
        if "ef" in search_params and int(search_params["ef"]) < top_k:
            # HNSW needs ef >= limit (a server fails the call: "ef(64) out of range"); the retry of
            # RecallEngine asks for more hits than the first search, so raise ef to the limit here.
            search_params["ef"] = top_k
        params: dict[str, Any] = {"metric_type": METRIC, "params": search_params}
        chunk = self.cfg.search_chunk

        def run(client: Any) -> None:
            self._ensure_loaded(client, target)
            rows = list(range(0, len(q), chunk))
            if len(rows) == 1 and self._direct is not False:
                result = self._search_direct(client, target, q, top_k, params)
                if result is not None:
                    _fill_hits(result, ids, scores, 0)
                    return
            # Fire every chunk before waiting for any: the server searches them in parallel.
            calls = [
                (
                    row,
                    client.search(
                        target,
                        data=list(q[row : row + chunk]),
                        limit=top_k,
                        anns_field=VECTOR_FIELD,
                        output_fields=[],  # the pk comes with every hit
                        search_params=params,
                        consistency_level=self.cfg.consistency_level,
                        _async=True,
                    ),
                )
                for row in rows
            ]
            for row, call in calls:
                _fill_hits(_search_response(call, self.cfg.timeout_s), ids, scores, row)

        self._call("search", run)
        return ids, scores

    def _search_direct(self, client: Any, target: str, q: np.ndarray, top_k: int, params: dict[str, Any]) -> Any:
        """One blocking Search RPC built with pymilvus' own request builder, answered as the raw
        ``SearchResultData``. Why not ``client.search(_async=True)``: a gRPC future starts a channel
        thread per call when none is pending, and the blocking public call builds a Python object per
        hit; this path halves the client's CPU per call (3.0-3.6 -> 1.5-1.7 ms at 80 queries x 64 hits,
        docs/benchmarks.md). ``None`` where this pymilvus lacks a piece (then the public path is used
        from now on); RPC errors raise as from any call."""
        try:
            from pymilvus.client import ts_utils
            from pymilvus.client.call_context import _api_level_md
            from pymilvus.client.prepare import Prepare

            handler = client._get_connection()
            context = client._generate_call_context()
            stub_search = handler._stub.Search
            kwargs: dict[str, Any] = {"consistency_level": self.cfg.consistency_level}
            kwargs = getattr(client, "_with_cluster_id", lambda k: k)(kwargs)  # as client.search does
            default = ts_utils.construct_guarantee_ts(target, kwargs, handler.server_address, context.get_db_name())
            request = Prepare.search_requests_with_expr(
                collection_name=target,
                anns_field=VECTOR_FIELD,
                param=params,
                limit=top_k,
                data=list(q),
                output_fields=[],
                use_default_consistency=default,
                **kwargs,
            )
            metadata = _api_level_md(context)
        except (ImportError, AttributeError, TypeError) as e:
            log.info("direct search RPC not available with this pymilvus (%s); using client.search", e)
            self._direct = False
            return None
        self._direct = True
        response = stub_search(request, timeout=self.cfg.timeout_s, metadata=metadata)
        _check_status(response.status)
        return response.results

    def get_vectors(self, ids: np.ndarray, collection: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of those ids that exist (found ids, vectors in the same order)."""
        id_list = np.unique(np.asarray(ids, dtype=np.int64)).tolist()
        target = self._target(collection)
        if not id_list:
            dim = self._dims.get(target) or (self.describe(target).dim if collection else self._live_dim())
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)

        def run(client: Any) -> Any:
            self._ensure_loaded(client, target)
            return client.get(target, ids=id_list, output_fields=[ID_FIELD, VECTOR_FIELD])

        rows = self._call("get", run)
        if not rows:
            dim = self._dims.get(target) or (self.describe(target).dim if collection else self._live_dim())
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        found = np.array([r[ID_FIELD] for r in rows], dtype=np.int64)
        vecs = np.array([r[VECTOR_FIELD] for r in rows], dtype=np.float32)
        return found, vecs

    def _live_dim(self) -> int:
        live = self.live()
        return live.dim if live else 0

    def iter_all(
        self, collection: str | None = None, batch: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every row as (ids, vectors, updated_ts) chunks: loads the item cache from Milvus."""
        target = self._target(collection)

        def open_it(client: Any) -> Any:
            self._ensure_loaded(client, target)
            return client.query_iterator(
                target, batch_size=batch, filter="", output_fields=[ID_FIELD, VECTOR_FIELD, TS_FIELD]
            )

        it = self._call("", open_it)
        try:
            while True:
                rows = self._call("", lambda _c: it.next())
                if not rows:
                    break
                yield (
                    np.array([r[ID_FIELD] for r in rows], np.int64),
                    np.array([r[VECTOR_FIELD] for r in rows], np.float32),
                    np.array([r[TS_FIELD] for r in rows], np.int64),
                )
        finally:
            with contextlib.suppress(Exception):
                it.close()

    def ids(self, collection: str, batch: int = 16_384) -> np.ndarray:
        """Every item id in ``collection`` (no vectors): what ``/rec/insert_data`` checks the export against."""

        def open_it(client: Any) -> Any:
            self._ensure_loaded(client, collection)
            return client.query_iterator(collection, batch_size=batch, filter="", output_fields=[ID_FIELD])

        it = self._call("", open_it)
        parts: list[np.ndarray] = [np.zeros(0, np.int64)]
        try:
            while rows := self._call("", lambda _c: it.next()):
                parts.append(np.fromiter((r[ID_FIELD] for r in rows), np.int64, count=len(rows)))
        finally:
            with contextlib.suppress(Exception):
                it.close()
        return np.concatenate(parts)

    def resolve(self, name: str) -> str | None:
        """The collection ``name`` means: itself, the one the alias points to when it is the alias
        (``/rec/count {"collection": "items"}``), None when neither exists. A name without
        ``milvus.collection_prefix`` is no item collection: None without asking Milvus."""
        if name != self.cfg.alias and not name.startswith(self.cfg.collection_prefix):
            return None
        if name in self.list_collections():
            return name
        if name == self.cfg.alias:
            live = self.live()
            return live.collection if live else None
        return None

    def count(self, collection: str | None = None) -> int:
        """Exact row count (``count(*)`` with Strong consistency: the only exact count on a server)."""
        target = self._target(collection)

        def run(client: Any) -> int:
            self._ensure_loaded(client, target)
            res = client.query(target, filter="", output_fields=["count(*)"], consistency_level="Strong")
            return int(res[0]["count(*)"])

        n = self._call("count", run)
        if collection is None and self.metrics is not None:
            self.metrics.milvus_rows.set(n)
        return n

    def ping(self) -> None:
        """Raise StoreError unless Milvus answers (used while waiting out an outage)."""
        self._call("", lambda c: c.list_collections())

    def close(self) -> None:
        self._reset()


def _search_response(call: Any, timeout_s: float) -> Any:
    """The raw ``SearchResultData`` protobuf of an async search, not pymilvus' SearchResult: building
    that one builds a Python object per hit, 60 % of the call's client CPU at 1024 queries x 58 hits
    (docs/benchmarks.md). Falls back to the parsed result where the future has no gRPC future inside
    (an error raised before the call, which ``result()`` re-raises, or another pymilvus layout)."""
    grpc_future = getattr(call, "_future", None)
    if grpc_future is None or not hasattr(grpc_future, "result"):
        return call.result()
    response = grpc_future.result(timeout=timeout_s)
    _check_status(response.status)
    return response.results


def _check_status(status: Any) -> None:
    code = getattr(status, "code", 0) or getattr(status, "error_code", 0)
    if code:
        raise StoreError(f"search failed: code {code}: {getattr(status, 'reason', '')}")


def _fill_hits(result: Any, ids: np.ndarray, scores: np.ndarray, row0: int) -> None:
    """Copy one call's hits into rows ``row0..`` of ``ids``/``scores`` (padded with -1 / -inf)."""
    top_k = ids.shape[1]
    if not hasattr(result, "topks"):  # a parsed pymilvus SearchResult (the fallback)
        for r, hits in enumerate(result):
            n = min(len(hits.ids), top_k)
            if n:
                ids[row0 + r, :n] = hits.ids[:n]
                scores[row0 + r, :n] = hits.distances[:n]
        return
    counts = np.fromiter(result.topks, dtype=np.int64, count=len(result.topks))
    total = int(counts.sum())
    if not total:
        return
    hit_ids = np.fromiter(result.ids.int_id.data, dtype=np.int64, count=total)
    hit_scores = np.fromiter(result.scores, dtype=np.float32, count=total)
    rows = np.repeat(np.arange(counts.size), counts)
    cols = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = cols < top_k
    ids[row0 + rows[keep], cols[keep]] = hit_ids[keep]
    scores[row0 + rows[keep], cols[keep]] = hit_scores[keep]
