"""Recall-path benchmark: through Kafka, with trained vectors, on Milvus Lite or a Milvus server.

Side by side in one run:
- batched: the streaming worker (micro-batches, one forward + one search call per batch);
- per_request: the same worker with the original service's path (one forward and K search calls
  per request), `mind-recall worker --per-request`;
- ceiling: capsules + exact BLAS search in-process, no Kafka, no Milvus (what the CPU can do).
Each worker is a separate process (as deployed) with its own Milvus Lite file, or both share one
server (``--uri http://127.0.0.1:19530``: the export is loaded once into a persistent collection
with ``--index``/``--index-params``, flushed and indexed before any request; ``--ef`` sets the search
ef). Requests come from an open-loop generator (producers/traffic.py) at rising rates; latency =
request ts -> result produced (the worker's clock), p50/p99 over the results that arrived.

    .venv/bin/python bench/recall.py [--users 3000 --items 50000 --rates 50,200,800 ...] [--json OUT]
    .venv/bin/python bench/recall.py --uri http://127.0.0.1:19530 --users 150000 --items 368000 \
        --clusters 1500 --train-batches 0 --request-users 3000 --ef 160 --rates 100,250,500,750
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mind_recall.settings import Settings, load  # noqa: E402

BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_model(
    work: Path, users: int, items: int, batches: int, clusters: int = 0
) -> tuple[Path, dict[int, np.ndarray]]:
    """Synth data + MIND trained 1 epoch (``batches`` of 256; 0: one pass over the samples) + export.
    ``clusters`` > 0 caps the synth topics (the generator holds a users x clusters matrix in memory)."""
    from model.data import read_train
    from model.export import export_checkpoint
    from model.synth import write_dataset
    from model.trainer import train

    export = work / "export"
    if not (export / "manifest.json").is_file():
        t0 = time.perf_counter()
        extra: dict[str, float] = {"clusters": clusters} if clusters else {}
        write_dataset(work / "data", users=users, items=items, seed=11, params=None, **extra)
        s = load(
            None,
            overrides=[
                f"runner.train_data_dir={work / 'data' / 'train'}",
                f"runner.test_data_dir={work / 'data' / 'valid'}",
                f"runner.model_save_path={work / 'ckpt'}",
                "runner.epochs=1",
                f"runner.batches_per_epoch={batches}",
                "runner.progress=false",
                "runner.train_batch_size=256",
            ],
            env={},
        )
        train(s)
        export_checkpoint(s, export)
        log(f"trained + exported in {time.perf_counter() - t0:.1f}s")
    return export, dict(read_train(work / "data" / "train"))


def committed(s: Settings, topic: str) -> int:
    from worker import kafka_io

    try:
        return sum(kafka_io.committed_offsets(s, s.worker.group_id, topic).values())
    except kafka_io.KafkaError:
        return -1


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def spawn_worker(s: Settings, export: Path, work: Path, name: str, per_request: bool) -> tuple[Any, Path]:
    # Lite: --load-items fills the worker's file once (skipped when the collection already holds the
    # export); the bench process cannot do it itself: Lite's lock stays with the process that opened
    # the file. Server: the bench loaded and indexed the collection before (load_server).
    args = [sys.executable, "-m", "cli", "worker", "--roles", "recall", "--export", str(export)]
    if not is_server(s.milvus.uri):
        args.append("--load-items")
    if per_request:
        args.append("--per-request")
    child = s.replace("metrics.enabled=false", "worker.session_timeout_ms=6000")
    for o in child.as_overrides():
        args += ["-o", o]
    logf = work / f"{name}.log"
    f = open(logf, "wb")  # noqa: SIM115 - owned by the child
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIND_RECALL_LOG": "INFO"}
    proc = subprocess.Popen(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if os.getpriority(os.PRIO_PROCESS, 0) != BASE_NICE:
        # --generator-nice: the worker runs at the bench's original niceness (lowering it needs root;
        # not preexec_fn: forking a process with gRPC threads and running Python in the child broke it)
        os.setpriority(os.PRIO_PROCESS, proc.pid, BASE_NICE)
    return proc, logf


def wait_ready(proc: Any, logf: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while b"restored" not in logf.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start: {logf.read_text()[-2000:]}")
        time.sleep(0.2)


def stop(proc: Any) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    tck = os.sysconf("SC_CLK_TCK")
    return (sum(vals) - idle) / tck, sum(vals) / tck


def cpu_watch(worker_pid: int) -> dict[str, list[int]]:
    """The processes whose CPU each rate reports: the worker, this process (load generator + result
    reader), the local Kafka broker and Milvus server (from scripts/*-local's pid files; absent ones
    are left out)."""
    from milvus_server import server_pids

    kafka_pid = ROOT / ".run" / "kafka" / "kafka.pid"
    broker = [int(kafka_pid.read_text().split()[0])] if kafka_pid.is_file() else []
    procs = {"worker": [worker_pid], "generator_and_reader": [os.getpid()],
             "kafka_broker": broker, "milvus_server": server_pids()}
    return {k: v for k, v in procs.items() if v}


def run_rates(
    s: Settings, users: list[int], rates: list[float], duration: float, drain_s: float, top_k: int,
    procs: dict[str, list[int]] | None = None,
) -> list[dict[str, Any]]:
    from milvus_server import cpu_s  # bench/milvus_server.py: CPU seconds of processes, from /proc

    from producers.traffic import run_open_loop

    out = []
    for rate in rates:
        before = {k: cpu_s(pids) for k, pids in (procs or {}).items()}
        busy0, total0 = _machine_busy_s()
        t0 = time.monotonic()
        r = run_open_loop(s, rate=rate, duration=duration, user_ids=users, top_k=top_k, drain_s=drain_s)
        wall = time.monotonic() - t0
        busy1, total1 = _machine_busy_s()
        # % of one core over the rate's run (sending + waiting for the last results)
        r["cpu_pct_of_one_core"] = {
            k: round(100 * (cpu_s(pids) - before[k]) / wall, 1) for k, pids in (procs or {}).items()
        }
        r["machine_busy_pct"] = round(100 * (busy1 - busy0) / max(1e-9, total1 - total0), 1)
        log(
            f"  rate {rate}: received {r['received']}/{r['sent']}, {r['throughput_rps']} rps, "
            f"p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, CPU {r['cpu_pct_of_one_core']} "
            f"(machine {r['machine_busy_pct']} % busy)"
        )
        out.append(r)
        r["sustained"] = r["received"] == r["sent"] and r["throughput_rps"] >= 0.9 * rate
        if r["received"] < r["sent"] or r["throughput_rps"] < 0.6 * rate:
            log("  saturated: higher rates skipped")
            break
    return out


def faiss_search(ids: np.ndarray, vecs: np.ndarray) -> Any:
    """Exact inner-product search with faiss IndexFlatIP (BLAS + heap; milvus-lite brings faiss)."""
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))

    def search(q: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
        scores, pos = index.search(np.ascontiguousarray(q, dtype=np.float32), topn)
        return np.where(pos >= 0, ids[np.maximum(pos, 0)], -1), scores

    return search


def ceiling(export: Path, seqs: dict[int, np.ndarray], batch: int, top_k: int, reps: int = 5) -> dict[str, Any]:
    """Capsules + exact search per batch of users, in-process, no Kafka, no Milvus: the compute bound.
    Two exact searches: model.evaluation.exact_search (numpy matmul + argpartition) and faiss FlatIP."""
    from model.evaluation import exact_search
    from model.tower import UserTower
    from worker.recall import ArrayItems, Query, RecallEngine, load_export_items, load_popular

    tower = UserTower.load(export)
    items: ArrayItems = load_export_items(export)
    users = sorted(seqs)[:batch]
    queries = [Query(u, top_k, seqs[u][-tower.maxlen :]) for u in users]
    out: dict[str, Any] = {"batch": batch}
    for name, search in (
        ("numpy", exact_search(items.ids, items.vectors)),
        ("faiss_flat_ip", faiss_search(items.ids, items.vectors)),
    ):
        eng = RecallEngine(tower, search, items, load_popular(export))
        eng.recall(queries)  # warm up
        times, stages = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            eng.recall(queries)
            times.append(time.perf_counter() - t0)
            stages.append(dict(eng.stage_s))
        med = float(np.median(times))
        out[name] = {
            "median_batch_ms": round(med * 1000, 2),
            "users_per_s": round(batch / med, 1),
            "stage_ms": {k: round(float(np.median([st[k] for st in stages])) * 1000, 2) for k in stages[0]},
        }
    return out


def load_server(s: Settings, export: Path) -> dict[str, Any]:
    """Server mode: the export's vectors into their version's collection (skipped when it already holds
    them), then flush and wait until every row is indexed, and reload, so that searches go through
    the index and not a growing segment. The collection is kept for the next run."""
    from pymilvus import MilvusClient

    from worker.recall import load_into_store
    from worker.store import ItemStore

    store = ItemStore(s.milvus)
    t0 = time.perf_counter()
    try:
        coll, _ = load_into_store(store, export)  # (collection, rows written: 0 when kept)
        rows = store.count(coll)
    finally:
        store.close()
    load_s = time.perf_counter() - t0
    client = MilvusClient(uri=s.milvus.uri, token=s.milvus.token or "", timeout=600)
    try:
        t0 = time.perf_counter()
        info = client.describe_index(coll, client.list_indexes(coll)[0])
        if int(info.get("indexed_rows", 0)) >= rows and int(info.get("pending_index_rows", 0)) == 0:
            log(f"server collection {coll}: {rows} rows, already indexed (kept from an earlier run)")
            return {"collection": coll, "rows": rows, "reused": True, "upsert_s": round(load_s, 1)}
        client.flush(coll)
        while True:
            info = client.describe_index(coll, client.list_indexes(coll)[0])
            if int(info.get("indexed_rows", 0)) >= rows and int(info.get("pending_index_rows", 0)) == 0:
                break
            time.sleep(1)
        build_s = time.perf_counter() - t0
        client.release_collection(coll)
        client.load_collection(coll)
    finally:
        client.close()
    log(f"server collection {coll}: {rows} rows, load {load_s:.1f}s, flush + index {build_s:.1f}s")
    return {"collection": coll, "rows": rows, "upsert_s": round(load_s, 1), "flush_and_index_s": round(build_s, 1)}


def search_cost(
    s: Settings, export: Path, seqs: dict[int, np.ndarray], n_queries: list[int], top_k: int
) -> dict[str, float]:
    """ItemStore.search per call at several batch sizes: interest vectors of the tower (as served)."""
    from model.tower import UserTower
    from worker.recall import load_export_items
    from worker.store import ItemStore

    tower = UserTower.load(export)
    items = load_export_items(export)
    users = sorted(seqs)[:512]
    hv = np.zeros((len(users), tower.maxlen, tower.dim), np.float32)
    lengths = np.zeros(len(users), np.int64)
    for r, u in enumerate(users):
        v = items.lookup(seqs[u][-tower.maxlen :])[0]
        hv[r, : len(v)], lengths[r] = v, len(v)
    interests, n_int = tower.encode(hv, lengths)
    pool = np.concatenate([interests[i, : max(1, int(n))] for i, n in enumerate(n_int)])
    store = ItemStore(s.milvus)
    coll = store.collection_name(tower.model_version)
    rng = np.random.default_rng(0)
    out = {}
    try:
        store.search(pool[:1], top_k, coll)
        for n in n_queries:
            ts = []
            for _ in range(9 if n <= 64 else 3):
                q = pool[rng.choice(len(pool), n, replace=len(pool) < n)]
                t0 = time.perf_counter()
                store.search(q, top_k, coll)
                ts.append(time.perf_counter() - t0)
            out[f"{n}_queries_ms"] = round(float(np.median(ts)) * 1000, 1)
    finally:
        store.close()
    return out


def direct_engine(s: Settings, export: Path) -> tuple[Any, Any]:
    """(RecallEngine, its ItemStore) over the export's tower and item vectors and the configured Milvus,
    built by the worker's own factory (worker/engines.py); the caller closes the store."""
    from worker.engines import engine_for_export
    from worker.recall import load_export_items
    from worker.store import ItemStore

    store = ItemStore(s.milvus)
    return engine_for_export(s, export, store=store, items=load_export_items(export)), store


def engine_direct(
    s: Settings, export: Path, seqs: dict[int, np.ndarray], batches: list[int], top_k: int, reps: int = 5
) -> dict[str, Any]:
    """The batched engine in-process against the configured Milvus (no Kafka): what one worker's
    recall step costs per micro-batch size, by stage (history, encode, search, merge)."""
    from worker.recall import Query

    eng, store = direct_engine(s, export)
    tower = eng.tower
    users = sorted(seqs)
    out: dict[str, Any] = {}
    try:
        for b in batches:
            times, stages = [], []
            for rep in range(reps + 1):
                qs = [Query(u, top_k, seqs[u][-tower.maxlen :]) for u in users[rep * b : (rep + 1) * b]]
                t0 = time.perf_counter()
                eng.recall(qs)
                if rep:  # the first is a warm-up
                    times.append(time.perf_counter() - t0)
                    stages.append(dict(eng.stage_s))
            med = float(np.median(times))
            out[f"batch_{b}"] = {
                "median_ms": round(med * 1000, 1),
                "users_per_s": round(b / med, 1),
                "stage_ms": {
                    k: round(float(np.median([st.get(k, 0.0) for st in stages])) * 1000, 1) for k in stages[0]
                },
            }
    finally:
        store.close()
    return out


def engine_open_loop(
    s: Settings, export: Path, seqs: dict[int, np.ndarray], rates: list[float], duration: float, top_k: int
) -> list[dict[str, Any]]:
    """The batched engine fed in-process at open-loop rates: no Kafka, no broker, no generator process.
    Requests arrive on schedule in a thread; a batch closes ``worker.batch_ms`` after its first request
    or when the engine is free, whichever is later (the worker's policy); latency is arrival -> results.
    The same cores without the Kafka hops: how much of the budget the engine and Milvus alone use."""
    import queue
    import threading

    from worker.recall import Query

    eng, store = direct_engine(s, export)
    tower = eng.tower
    users = sorted(seqs)
    window = s.worker.batch_ms / 1000
    out = []
    try:
        eng.recall([Query(u, top_k, seqs[u][-tower.maxlen :]) for u in users[:16]])  # warm-up
        for rate in rates:
            arrivals: queue.SimpleQueue[tuple[float, int] | None] = queue.SimpleQueue()
            n = int(rate * duration)
            rng = np.random.default_rng(int(rate))
            picks = rng.integers(0, len(users), n)

            def generate(rate: float = rate, n: int = n, picks: np.ndarray = picks,
                         arrivals: queue.SimpleQueue = arrivals) -> None:  # type: ignore[type-arg]
                t0 = time.perf_counter()
                for k in range(n):
                    wait = t0 + k / rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    arrivals.put((time.perf_counter(), users[int(picks[k])]))
                arrivals.put(None)

            gen = threading.Thread(target=generate, daemon=True)
            lat: list[float] = []
            sizes: list[int] = []
            cpu0, t_start = time.process_time(), time.perf_counter()
            gen.start()
            done = False
            while not done:
                first = arrivals.get()
                if first is None:
                    break
                batch = [first]
                while not done:  # gather until the window after the first arrival is over
                    left = first[0] + window - time.perf_counter()
                    try:
                        nxt = arrivals.get(timeout=left) if left > 0 else arrivals.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        done = True
                    else:
                        batch.append(nxt)
                eng.recall([Query(u, top_k, seqs[u][-tower.maxlen :]) for _, u in batch])
                end = time.perf_counter()
                lat += [(end - a) * 1000 for a, _ in batch]
                sizes.append(len(batch))
            gen.join()
            wall = time.perf_counter() - t_start
            row = {
                "offered_rps": rate, "answered": len(lat), "throughput_rps": round(len(lat) / wall, 1),
                "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1),
                               "p99": round(float(np.percentile(lat, 99)), 1), "max": round(max(lat), 1)},
                "batch_size_p50": float(np.median(sizes)), "bench_process_cpu_pct": round(
                    100 * (time.process_time() - cpu0) / wall, 1),
            }
            log(f"  engine open loop {rate}: {row}")
            out.append(row)
    finally:
        store.close()
    return out


def drop_topics(s: Settings, prefix: str) -> None:
    """Delete this run's topics (each run replays ~3M clicks into its own: 2 GB of broker data after 30
    runs). Best effort: a failure only leaves them behind."""
    from worker import kafka_io

    try:
        mine = [t for t in kafka_io.list_topics(s) if t.startswith(prefix)]
        kafka_io.delete_topics(s, mine)
        log(f"deleted {len(mine)} topics {prefix}*")
    except Exception as e:  # the results are already measured
        log(f"could not delete the topics {prefix}*: {e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--train-batches", type=int, default=300)
    ap.add_argument("--rates", default="10,25,50,100,200")
    ap.add_argument("--per-request-rates", default="0.5,1,2", help="'' skips the per-request path")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--drain-s", type=float, default=15.0)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--work", default=str(ROOT / ".run" / "bench-recall"))
    ap.add_argument("--kafka", default="127.0.0.1:9092")
    ap.add_argument("--uri", default="", help="Milvus server URI (default: Milvus Lite, one file per worker)")
    ap.add_argument("--index", default="", help="index type (default: FLAT on Lite, HNSW on a server)")
    ap.add_argument("--index-params", default='{"M": 16, "efConstruction": 200}', help="JSON (HNSW)")
    ap.add_argument("--ef", type=int, default=160, help="HNSW search ef (>= top_k)")
    ap.add_argument("--clusters", type=int, default=0, help="synth topics (0: items/25; memory ~ users x clusters)")
    ap.add_argument("--request-users", type=int, default=0,
                    help="replay clicks of and send requests for only the first N train users (0: all)")
    ap.add_argument("--skip-ceiling", action="store_true")
    ap.add_argument("--batch-ms", type=float, default=5.0, help="worker.batch_ms of both workers")
    ap.add_argument("--engine-rates", default="",
                    help="also feed the batched engine in-process at these open-loop rates (no Kafka)")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("-o", "--override", action="append", default=[],
                    help="a settings override for the workers and the generator (key=value), repeatable")
    ap.add_argument("--generator-nice", type=int, default=0,
                    help="run this process (load generator + result reader) at this niceness, the workers at the "
                         "bench's own: the generator stands in for other machines (raising a child back needs root)")
    a = ap.parse_args()
    if a.generator_nice:
        os.nice(a.generator_nice)
    t_start = time.perf_counter()
    work = Path(a.work) / f"u{a.users}-i{a.items}-b{a.train_batches}"
    work.mkdir(parents=True, exist_ok=True)
    export, seqs = build_model(work, a.users, a.items, a.train_batches, a.clusters)
    if a.request_users:
        seqs = {u: seqs[u] for u in sorted(seqs)[: a.request_users]}
    server = is_server(a.uri)
    index = a.index or ("HNSW" if server else "FLAT")
    hnsw = [f"milvus.index_params={a.index_params}", f'milvus.search_params={{"ef": {a.ef}}}']
    milvus = (
        [f"milvus.uri={a.uri}", f"milvus.index_type={index}", "milvus.collection_prefix=benchrecall_",
         "milvus.alias=benchrecall", "milvus.timeout_s=60", *(hnsw if index == "HNSW" else [])]
        if server
        else [f"milvus.uri={work / 'milvus.db'}"]
    )
    manifest = json.loads((export / "manifest.json").read_text())
    run_id = uuid.uuid4().hex[:8]
    topics = ["clicks", "item_embeddings", "recall_requests", "recall_results", "dlq", "history_changelog",
              "model_control"]  # the run's own: no announcement from elsewhere switches its workers
    s = load(
        None,
        overrides=[
            f"kafka.bootstrap_servers={a.kafka}",
            *milvus,
            f"worker.group_id=bench-{run_id}",
            f"topics.partitions={a.partitions}",
            "worker.batch_max=256",
            f"worker.batch_ms={a.batch_ms}",
            *[f"topics.{t}=bench-{run_id}-{t.replace('_', '-')}" for t in topics],
            *a.override,
        ],
        env={},
    )
    from producers.traffic import replay_clicks
    from worker.recall_worker import RecallWorker

    RecallWorker(s, engine=None).ensure_topics()  # type: ignore[arg-type]
    server_load = load_server(s, export) if server else None
    n_clicks = replay_clicks(s, work / "data" / "train", users=a.request_users or None)
    log(f"{n_clicks} clicks for {len(seqs)} users published")
    users = sorted(seqs)
    result: dict[str, Any] = {
        "catalogue_items": manifest["n_items"],
        "dim": manifest["dim"],
        "k": manifest["k"],
        "maxlen": manifest["maxlen"],
        "users": len(seqs),
        "clicks": n_clicks,
        "top_k": a.top_k,
        "partitions": a.partitions,
        "milvus": (
            f"Milvus server {a.uri}, {index} {s.milvus.index_params if index == 'HNSW' else ''}"
            f" search {dict(s.milvus.search_params)}"
            if server
            else "Milvus Lite (embedded, FLAT)"
        ),
        "server_load": server_load,
        "cpus": os.cpu_count(),
        "batch_max": s.worker.batch_max,
        "batch_ms": s.worker.batch_ms,
        "duration_per_rate_s": a.duration,
        "generator_nice": a.generator_nice,
        "overrides": a.override,
    }
    for mode, rates in (("batched", a.rates), ("per_request", a.per_request_rates)):
        if not rates:  # e.g. --per-request-rates '' for repeated runs of one path
            continue
        # own group and request topic per mode: no backlog carried over; clicks/changelog are shared
        sm = s.replace(
            f"worker.group_id={s.worker.group_id}-{mode}", f"topics.recall_requests={s.topics.recall_requests}-{mode}"
        )
        RecallWorker(sm, engine=None).ensure_topics()  # type: ignore[arg-type]
        proc, logf = spawn_worker(sm, export, work, mode, per_request=mode == "per_request")
        try:
            wait_ready(proc, logf)
            deadline = time.monotonic() + 120
            while committed(sm, sm.topics.clicks) < n_clicks:  # histories in place before any request
                if time.monotonic() > deadline:
                    raise RuntimeError("clicks not consumed in time")
                time.sleep(0.5)
            log(f"{mode} worker ready; histories applied")
            result[mode] = run_rates(sm, users, [float(r) for r in rates.split(",")], a.duration, a.drain_s, a.top_k,
                                     cpu_watch(proc.pid))
        finally:
            stop(proc)
    if server:
        result["engine_direct"] = engine_direct(s, export, seqs, [16, 64, 256], a.top_k)
        result["search_call"] = search_cost(s, export, seqs, [1, 4, 64, 256, 1024], a.top_k)
    else:
        result["lite_search_call"] = search_cost(s, export, seqs, [1, 4, 64, 256, 1024], a.top_k)
    if a.engine_rates:
        result["engine_open_loop"] = engine_open_loop(
            s, export, seqs, [float(r) for r in a.engine_rates.split(",")], a.duration, a.top_k)
    if not a.skip_ceiling:
        reps = 3 if manifest["n_items"] > 100_000 else 5
        result["ceiling_exact_blas"] = ceiling(export, seqs, 256, a.top_k, reps=reps)

    def best(rows: list[dict[str, Any]]) -> float:
        return max((r["throughput_rps"] for r in rows if r["sustained"]), default=0.0)

    result["max_sustained_rps"] = {
        "batched": best(result.get("batched", [])),
        "per_request": best(result.get("per_request", [])),
    }
    if result["max_sustained_rps"]["per_request"]:
        result["speedup_batched_vs_per_request"] = round(
            result["max_sustained_rps"]["batched"] / result["max_sustained_rps"]["per_request"], 1
        )
    drop_topics(s, f"bench-{run_id}-")
    result["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
