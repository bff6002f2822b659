"""Recall-path benchmark: through Kafka, with trained vectors, on Milvus Lite.

Side by side in one run:
- batched: the streaming worker (micro-batches, one forward + one search call per batch);
- per_request: the same worker with the original service's path (one forward and K search calls
  per request), `mind-recall worker --per-request`;
- ceiling: capsules + exact BLAS search in-process, no Kafka, no Milvus (what the CPU can do).
Each worker is a separate process (as deployed) with its own Milvus Lite file; requests come from
an open-loop generator (producers/traffic.py) at rising rates; latency = request ts -> result
produced (the worker's clock), p50/p99 over the results that arrived.

    .venv/bin/python bench/recall.py [--users 3000 --items 50000 --rates 50,200,800 ...] [--json OUT]
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

from mind_recall.settings import Settings, load  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_model(work: Path, users: int, items: int, batches: int) -> tuple[Path, dict[int, np.ndarray]]:
    from model.data import read_train
    from model.export import export_checkpoint
    from model.synth import write_dataset
    from model.trainer import train

    export = work / "export"
    if not (export / "manifest.json").is_file():
        t0 = time.perf_counter()
        write_dataset(work / "data", users=users, items=items, seed=11)
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

    admin = kafka_io.make_admin(s)
    try:
        offsets = admin.list_group_offsets(s.worker.group_id).get(s.worker.group_id, {})
    except kafka_io.KafkaError:
        return -1
    finally:
        admin.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic)


def spawn_worker(s: Settings, export: Path, work: Path, name: str, per_request: bool) -> tuple[Any, Path]:
    # --load-items fills the Lite file once (skipped when the collection already holds the export);
    # the bench process cannot do it itself: Lite's lock stays with the process that opened the file.
    args = [sys.executable, "-m", "mind_recall.cli", "worker", "--roles", "recall",
            "--export", str(export), "--load-items"]
    if per_request:
        args.append("--per-request")
    over = {
        "kafka.bootstrap_servers": s.kafka.bootstrap_servers,
        "milvus.uri": str(work / "milvus.db"),
        "worker.group_id": s.worker.group_id,
        "worker.batch_max": s.worker.batch_max,
        "worker.batch_ms": s.worker.batch_ms,
        "topics.partitions": s.topics.partitions,
        "metrics.enabled": "false",
        "worker.session_timeout_ms": 6000,
        **{
            f"topics.{k}": getattr(s.topics, k)
            for k in (
                "clicks",
                "item_embeddings",
                "recall_requests",
                "recall_results",
                "dlq",
                "history_changelog",
            )
        },
    }
    for k, v in over.items():
        args += ["-o", f"{k}={v}"]
    logf = work / f"{name}.log"
    f = open(logf, "wb")  # noqa: SIM115 - owned by the child
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIND_RECALL_LOG": "INFO"}
    return subprocess.Popen(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env), logf


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


def run_rates(
    s: Settings, users: list[int], rates: list[float], duration: float, drain_s: float, top_k: int
) -> list[dict[str, Any]]:
    from producers.traffic import run_open_loop

    out = []
    for rate in rates:
        r = run_open_loop(s, rate=rate, duration=duration, user_ids=users, top_k=top_k, drain_s=drain_s)
        log(
            f"  rate {rate}: received {r['received']}/{r['sent']}, {r['throughput_rps']} rps, "
            f"p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms"
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


def lite_search_cost(s: Settings, dim: int, n_queries: list[int], top_k: int) -> dict[str, float]:
    from worker.store import ItemStore

    store = ItemStore(s.milvus)
    rng = np.random.default_rng(0)
    out = {}
    try:
        store.search(rng.normal(size=(1, dim)).astype(np.float32), top_k)
        for n in n_queries:
            q = rng.normal(size=(n, dim)).astype(np.float32)
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                store.search(q, top_k)
                ts.append(time.perf_counter() - t0)
            out[f"{n}_queries_ms"] = round(float(np.median(ts)) * 1000, 1)
    finally:
        store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--train-batches", type=int, default=300)
    ap.add_argument("--rates", default="10,25,50,100,200")
    ap.add_argument("--per-request-rates", default="0.5,1,2")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--drain-s", type=float, default=15.0)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--work", default=str(ROOT / ".run" / "bench-recall"))
    ap.add_argument("--kafka", default="127.0.0.1:9092")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    a = ap.parse_args()
    t_start = time.perf_counter()
    work = Path(a.work) / f"u{a.users}-i{a.items}-b{a.train_batches}"
    work.mkdir(parents=True, exist_ok=True)
    export, seqs = build_model(work, a.users, a.items, a.train_batches)
    manifest = json.loads((export / "manifest.json").read_text())
    run_id = uuid.uuid4().hex[:8]
    topics = ["clicks", "item_embeddings", "recall_requests", "recall_results", "dlq", "history_changelog"]
    s = load(
        None,
        overrides=[
            f"kafka.bootstrap_servers={a.kafka}",
            f"milvus.uri={work / 'milvus.db'}",
            f"worker.group_id=bench-{run_id}",
            f"topics.partitions={a.partitions}",
            "worker.batch_max=256",
            "worker.batch_ms=5",
            *[f"topics.{t}=bench-{run_id}-{t.replace('_', '-')}" for t in topics],
        ],
        env={},
    )
    from producers.traffic import replay_clicks
    from worker.recall_worker import RecallWorker

    RecallWorker(s, engine=None).ensure_topics()  # type: ignore[arg-type]
    n_clicks = replay_clicks(s, work / "data" / "train")
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
        "milvus": "Milvus Lite (embedded, FLAT)",
        "cpus": os.cpu_count(),
        "batch_max": s.worker.batch_max,
        "batch_ms": s.worker.batch_ms,
        "duration_per_rate_s": a.duration,
    }
    for mode, rates in (("batched", a.rates), ("per_request", a.per_request_rates)):
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
            result[mode] = run_rates(sm, users, [float(r) for r in rates.split(",")], a.duration, a.drain_s, a.top_k)
        finally:
            stop(proc)
    result["lite_search_call"] = lite_search_cost(s, manifest["dim"], [1, 4, 64, 256, 1024], a.top_k)
    result["ceiling_exact_blas"] = ceiling(export, seqs, 256, a.top_k)

    def best(rows: list[dict[str, Any]]) -> float:
        return max((r["throughput_rps"] for r in rows if r["sustained"]), default=0.0)

    result["max_sustained_rps"] = {
        "batched": best(result["batched"]),
        "per_request": best(result["per_request"]),
    }
    if result["max_sustained_rps"]["per_request"]:
        result["speedup_batched_vs_per_request"] = round(
            result["max_sustained_rps"]["batched"] / result["max_sustained_rps"]["per_request"], 1
        )
    result["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
