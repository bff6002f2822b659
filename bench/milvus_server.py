"""Milvus *server* benchmarks (scripts/milvus-local): the item path and HNSW recall, over gRPC.

    .venv/bin/python bench/milvus_server.py items   [--repeats 3] [--events 100000] [-o key=value ...]
    .venv/bin/python bench/milvus_server.py profile [--events 100000]
    .venv/bin/python bench/milvus_server.py recall  [--export DIR --data DIR | --synthetic N] [--efs 50,64,128,256]

items    per repeat, in one run: the bare ItemStore.upsert ceiling, the writer draining a backlog
         (bench/items.py), then a steady producer at --rate with freshness = event ts -> Milvus ack for
         every event and event ts -> visible in a search (sampled every --sample-ms, at the configured
         consistency) beside it; CPU seconds of the writer and of the Milvus server per phase. Medians.
profile  each stage of the writer alone: librdkafka fetch (the writer's GroupConsumer), decode (binary vs
         JSON), ItemStore.upsert at several batch sizes (with the share of client CPU).
recall   recall@50 of HNSW (M, efConstruction from -o milvus.index_params) vs exact numpy search, at
         each ef, and search latency for batches of 1/64/1024 queries (medians). Queries are MIND
         interest vectors of the export's user tower on the eval histories (trained vectors), or
         clustered synthetic vectors with --synthetic (labelled so in the output).
Needs the broker (scripts/kafka-local start; items/profile) and the server (scripts/milvus-local start).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import items as bench_items  # noqa: E402  (bench/items.py: ceiling, drain, Probe)

from mind_recall.settings import Settings, load  # noqa: E402
from worker.store import ItemStore  # noqa: E402

HNSW = ["milvus.index_type=HNSW", 'milvus.index_params={"M": 16, "efConstruction": 200}']


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(xs: Sequence[float] | np.ndarray, q: float) -> float:
    return round(float(np.percentile(np.asarray(xs, np.float64), q)), 1) if len(xs) else float("nan")


# -- process CPU accounting ----------------------------------------------------------------------
def server_pids() -> list[int]:
    """The milvus-server wrapper started by scripts/milvus-local and its children."""
    pid_file = ROOT / ".run" / "milvus-server" / "milvus-server.pid"
    if not pid_file.exists():
        return []
    root = int(pid_file.read_text().strip())
    pids = [root]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == root:
                pids.append(int(d.name))
    return pids


def cpu_s(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def rss_mb(pids: list[int]) -> int:
    kb = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb += int(line.split()[1])
        except OSError:
            pass
    return kb // 1024


class CpuMeter:
    """CPU seconds of this process and of the server over a phase, as cores used."""

    def __init__(self) -> None:
        self.pids = server_pids()
        self.t = time.perf_counter()
        self.me = time.process_time()
        self.srv = cpu_s(self.pids)

    def done(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t
        return {
            "bench_process_cores": round((time.process_time() - self.me) / wall, 2),
            "milvus_server_cores": round((cpu_s(self.pids) - self.srv) / wall, 2),
        }


# -- items ---------------------------------------------------------------------------------------
def _visibility_worker(cfg: dict, q_in: Any, q_out: Any) -> None:
    """Child process: for each sampled (item_id, event ts, ack ms), search until it is visible.

    A separate process (as a recall worker would be), so the writer's GIL does not delay the probe.
    A search with the item's own vector filtered to ``item_id == X`` (limit 1), repeated at the
    configured consistency level; visible = the hit's ``updated_ts`` reached the event's ts. (A single
    ``item_id in [...]`` search for all pending ids with one query vector missed most of them.)
    Samples not seen within 10 s (deleted by a later event) are counted apart."""
    import queue

    from pymilvus import MilvusClient

    from mind_recall.item_wire import now_ms

    client = MilvusClient(uri=cfg["uri"], token=cfg["token"], timeout=10)
    params = {"metric_type": "IP", "params": cfg["search_params"]}
    inflight: dict[int, tuple[int, int, float, list[float]]] = {}
    ev_ms: list[float] = []
    ack_ms: list[float] = []
    search_ms: list[float] = []
    unseen, stopping = 0, False
    while not (stopping and not inflight):
        try:
            while True:
                msg = q_in.get(timeout=0.002 if not inflight else 0.0) if not stopping else None
                if msg is None:
                    stopping = True
                    break
                inflight.setdefault(msg[0], (msg[1], msg[2], time.monotonic(), msg[3]))
        except queue.Empty:
            pass
        if not inflight:
            continue
        for item_id in sorted(inflight):
            ts, ack, sampled, vec = inflight[item_id]
            t0 = time.perf_counter()
            # the item's own vector, filtered to its id: found as soon as it is visible
            res = client.search(
                cfg["collection"], data=[vec], limit=1, filter=f"item_id == {item_id}",
                output_fields=["updated_ts"], search_params=params, consistency_level=cfg["consistency"],
            )
            search_ms.append((time.perf_counter() - t0) * 1000)
            hits = res[0] if res else []
            if hits and int(hits[0]["entity"]["updated_ts"]) >= ts:
                done = now_ms()
                ev_ms.append(done - ts)
                ack_ms.append(done - ack)
                del inflight[item_id]
            elif time.monotonic() - sampled > 10:
                unseen += 1
                del inflight[item_id]
        time.sleep(cfg["poll_ms"] / 1000)
    q_out.put({"ev": ev_ms, "ack": ack_ms, "search": search_ms, "unseen": unseen})


class Visibility:
    """Feeds sampled acked upserts (one per ``every_ms`` at most) to the probe process."""

    def __init__(self, s: Settings, collection: str, every_ms: float, poll_ms: float = 5.0) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.q_in, self.q_out = ctx.Queue(), ctx.Queue()
        cfg = {"uri": s.milvus.uri, "token": s.milvus.token or "", "collection": collection,
               "dim": s.hyper_parameters.embedding_dim, "search_params": dict(s.milvus.search_params),
               "consistency": s.milvus.consistency_level, "poll_ms": poll_ms}
        self.proc = ctx.Process(target=_visibility_worker, args=(cfg, self.q_in, self.q_out), daemon=True)
        self.every = every_ms / 1000
        self.next = 0.0

    def start(self) -> None:
        self.proc.start()

    def on_ack(self, events: list, ack_ms: int) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        for e in reversed(events):
            if e.vector is not None:
                self.q_in.put((e.item_id, e.ts, ack_ms, e.vector.tolist()))
                self.next = now + self.every
                return

    def finish(self) -> dict[str, Any]:
        self.q_in.put(None)
        r = self.q_out.get(timeout=30)
        self.proc.join(10)
        return {
            "samples": len(r["ev"]),
            "not_seen_in_10s": r["unseen"],  # deleted by a later event (2 % of events are deletes)
            "event_to_visible_ms": {"p50": pct(r["ev"], 50), "p99": pct(r["ev"], 99),
                                    "max": round(max(r["ev"], default=float("nan")), 1)},
            "ack_to_visible_ms": {"p50": pct(r["ack"], 50), "p99": pct(r["ack"], 99)},
            "probe_search_ms_p50": pct(r["search"], 50),
        }


def fresh_visible(s: Settings, n: int, dim: int, rate: float, sample_ms: float, binary: bool) -> dict:
    """bench/items.py's freshness phase plus sampled search visibility and CPU per process."""
    from worker import kafka_io
    from worker.item_writer import ItemWriter
    from worker.metrics import Metrics

    ref: list = [None]
    probe = bench_items.Probe(10**12, ref)
    vis: list[Visibility] = []

    def on_ack(events: list, ack_ms: int) -> None:
        probe(events, ack_ms)
        if vis:
            vis[0].on_ack(events, ack_ms)

    writer = ItemWriter(s, Metrics(), on_ack=on_ack)
    ref[0] = writer
    th = threading.Thread(target=writer.run, daemon=True)
    th.start()
    kafka_io.ensure_item_topic(s)
    deadline = time.monotonic() + 30
    while (writer._consumer is None or not writer._consumer.assignment()) and time.monotonic() < deadline:
        time.sleep(0.1)
    store = ItemStore(s.milvus)
    vis.append(Visibility(s, store.collection_name("bench"), sample_ms))
    store.close()
    vis[0].start()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(s.dump(mask_secrets=False))
    cmd = [sys.executable, "-m", "cli", "produce", "item-updates", "-m", f.name,
           "-o", "runner.progress=false", "--count", str(n), "--dim", str(dim), "--items", str(n // 2),
           "--delete-ratio", "0.02", "--model-version", "bench", "--rate", str(rate), "--seed", "2"]
    if binary:
        cmd.append("--binary")
    meter = CpuMeter()
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    produce_s = time.perf_counter() - t0
    deadline = time.monotonic() + 60
    while writer.committed < n and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu = meter.done()
    writer.stop()
    th.join(30)
    visible = vis[0].finish()
    os.unlink(f.name)
    f_ms = probe.fresh_ms
    return {
        "records": n,
        "target_rate": rate,
        "achieved_rate": round(n / produce_s),
        "applied_events": probe.n,
        "ack_freshness_ms": {"p50": pct(f_ms, 50), "p99": pct(f_ms, 99), "max": round(max(f_ms), 1)},
        "visible": visible,
        "cpu": cpu,
    }


class AckCpu(bench_items.Probe):
    """bench/items.py's Probe plus CPU snapshots (writer process, server) at the first and last ack."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(10**12, [None])
        self.pids = pids
        self.first_cpu = self.last_cpu = (0.0, 0.0)

    def __call__(self, events: list, ack_ms: int) -> None:
        super().__call__(events, ack_ms)
        snap = (time.process_time(), cpu_s(self.pids))
        if self.first_cpu == (0.0, 0.0):
            self.first_cpu = snap
        self.last_cpu = snap


# label -> (file name ending, function name) of the profiled function whose cumulative seconds are reported
PROFILE_KEYS = {
    "kafka_fetch (GroupConsumer.poll)": ("kafka_io.py", "poll"),
    "decode_item_event": ("", "decode_item_event"),
    "ItemStore.upsert total": ("store.py", "upsert"),
    "pymilvus row packing": ("", "_parse_upsert_row_request"),
    "grpc wait for the server": ("", "_blocking"),
    "offset commit (GroupConsumer.commit)": ("kafka_io.py", "commit"),
}


def drain_profiled(s: Settings, n: int, dim: int, profile: bool) -> dict:
    """bench/items.py's drain, with CPU per process over the first-to-last-ack window and, with
    ``profile``, where the writer's time goes (cProfile, microseconds per record)."""
    import cProfile
    import pstats

    from producers.items import publish, synthetic_updates
    from worker.item_writer import ItemWriter
    from worker.metrics import Metrics

    events = synthetic_updates(n, dim, n // 2, 0.02, seed=1, model_version="bench", new_ratio=0.3)
    t0 = time.perf_counter()
    publish(s, events, total=n, binary=True, progress=False)
    produce_s = time.perf_counter() - t0
    probe = AckCpu(server_pids())
    writer = ItemWriter(s, Metrics(), on_ack=probe)
    probe.writer_ref[0] = writer
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    writer.run(idle_exit_s=3.0)
    if prof:
        prof.disable()
    batches = writer.metrics.registry.get_sample_value("mind_recall_item_batch_size_count") or 0
    window = max(probe.last - probe.first, 1e-9)
    out: dict[str, Any] = {
        "records": writer.committed,
        "produce_records_per_s": round(n / produce_s),
        # the first batch's records are acked at the window's start: leave them out
        "records_per_s": round(writer.committed * (batches - 1) / max(batches, 1) / window),
        "batches": int(batches),
        "cores_in_window": {
            "writer": round((probe.last_cpu[0] - probe.first_cpu[0]) / window, 2),
            "milvus_server": round((probe.last_cpu[1] - probe.first_cpu[1]) / window, 2),
        },
    }
    if prof:
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        us: dict[str, float] = {}
        for label, (file_end, func) in PROFILE_KEYS.items():
            best = 0.0
            for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
                if name == func and file.endswith(file_end):
                    best = max(best, ct)
            us[label] = round(best / max(writer.committed, 1) * 1e6, 1)
        out["profile_us_per_record"] = us
    return out


def drop_all(s: Settings) -> None:
    """Drop the run's collections (its own prefix): the server is shared between runs."""
    store = ItemStore(s.milvus)
    for name in store.list_collections():
        store.drop(name, force=True)
    store.close()


def cmd_items(args: argparse.Namespace) -> dict:
    uri = args.uri
    base = [f"hyper_parameters.embedding_dim={args.dim}", *HNSW, 'milvus.search_params={"ef": 64}',
            *args.override]
    runs = []
    for r in range(args.repeats):
        tag = f"msb{uuid.uuid4().hex[:6]}"
        ov = [*base, f"milvus.collection_prefix={tag}_", f"milvus.alias={tag}"]
        log(f"repeat {r + 1}/{args.repeats}: ceiling")
        run: dict[str, Any] = {"ceiling": bench_items.ceiling(bench_items._settings(ov, "c", uri), args.events,
                                                               args.dim)}
        log("drain")
        run["drain"] = drain_profiled(bench_items._settings(ov, "d", uri), args.events, args.dim, False)
        rate = args.rate or max(1000.0, round(run["drain"]["records_per_s"] / 2, -2))
        log(f"fresh at {rate}/s")
        s = bench_items._settings(ov, "f", uri)
        run["fresh"] = fresh_visible(s, args.fresh_events, args.dim, rate, args.sample_ms, not args.json_codec)
        run["writer_vs_ceiling"] = round(run["drain"]["records_per_s"] / run["ceiling"]["upserts_per_s"], 3)
        drop_all(s)
        runs.append(run)
        log(json.dumps(run))

    def med(path: list[str]) -> float:
        vals = []
        for run in runs:
            v: Any = run
            for k in path:
                v = v[k]
            vals.append(v)
        return statistics.median(vals)

    profiled = None
    if args.profile:
        tag = f"msbp{uuid.uuid4().hex[:6]}"
        s = bench_items._settings([*base, f"milvus.collection_prefix={tag}_", f"milvus.alias={tag}"], "p", uri)
        profiled = drain_profiled(s, args.events, args.dim, True)
        drop_all(s)
    return {
        "dim": args.dim,
        "milvus": uri,
        "codec": "json" if args.json_codec else "binary",
        "settings": base,
        "repeats": args.repeats,
        "median": {
            "ceiling_upserts_per_s": med(["ceiling", "upserts_per_s"]),
            "drain_records_per_s": med(["drain", "records_per_s"]),
            "writer_vs_ceiling": med(["writer_vs_ceiling"]),
            "fresh_rate": med(["fresh", "achieved_rate"]),
            "ack_p50_ms": med(["fresh", "ack_freshness_ms", "p50"]),
            "ack_p99_ms": med(["fresh", "ack_freshness_ms", "p99"]),
            "visible_p50_ms": med(["fresh", "visible", "event_to_visible_ms", "p50"]),
            "visible_p99_ms": med(["fresh", "visible", "event_to_visible_ms", "p99"]),
        },
        "runs": runs,
        "profiled_drain": profiled,
    }


# -- profile -------------------------------------------------------------------------------------
def cmd_profile(args: argparse.Namespace) -> dict:
    from mind_recall.item_wire import decode_item_event
    from producers.items import publish, synthetic_updates
    from worker import kafka_io

    try:
        import crc32c  # noqa: F401  (kafka-python checks record CRCs with it when installed)

        crc = "crc32c (C)"
    except ImportError:
        crc = "pure Python"
    n, dim = args.events, args.dim
    u = uuid.uuid4().hex[:6]
    out: dict[str, Any] = {"events": n, "dim": dim, "kafka_crc32c": crc}
    decoded: list = []
    for binary in (True, False):
        codec = "binary" if binary else "json"
        s = load(None, overrides=[f"topics.item_embeddings=prof-{u}-{codec}", f"milvus.uri={args.uri}",
                                  "metrics.enabled=false", *args.override], env={})
        ev = synthetic_updates(n, dim, n // 2, 0.0, seed=1, model_version="bench", new_ratio=0.3)
        t = time.perf_counter()
        publish(s, ev, total=n, binary=binary, progress=False)
        res: dict[str, Any] = {"produce_per_s": round(n / (time.perf_counter() - t))}
        recs: list = []
        for mpr in (2000, 10000):
            c = kafka_io.make_group_consumer(s, f"prof-{uuid.uuid4().hex[:6]}")  # the item writer's client
            c.subscribe([s.topics.item_embeddings], lambda _parts: None, lambda _parts: None)
            recs, t0, c0, first = [], 0.0, 0.0, 0
            while len(recs) < n:
                polled = c.poll(timeout_ms=500, max_records=mpr)
                if polled and not t0:  # time from the first fetch on (group join excluded)
                    t0, c0 = time.perf_counter(), time.process_time()
                    first = sum(len(v) for v in polled.values())
                for v in polled.values():
                    recs.extend(v)
            dt = time.perf_counter() - t0
            res[f"fetch_per_s_max_poll_{mpr}"] = round((n - first) / dt)
            res[f"fetch_cpu_us_per_record_{mpr}"] = round((time.process_time() - c0) / (n - first) * 1e6, 1)
            c.close()
        res["value_bytes_mean"] = round(sum(len(r.value or b"") for r in recs) / len(recs))
        t = time.perf_counter()
        decoded = [decode_item_event(r, max_record_bytes=1 << 20) for r in recs]
        res["decode_per_s"] = round(n / (time.perf_counter() - t))
        out[codec] = res
        log(json.dumps({codec: res}))
    tag = f"prof{u}"
    s = load(None, overrides=[f"milvus.uri={args.uri}", *HNSW, f"milvus.collection_prefix={tag}_",
                              f"milvus.alias={tag}", *args.override], env={})
    store = ItemStore(s.milvus)
    name = store.ensure_collection("p", dim)
    ups = [d for d in decoded if d.vector is not None]
    ids = np.array([d.item_id for d in ups], np.int64)
    vecs = np.stack([d.vector for d in ups])
    ts = np.zeros(len(ups), np.int64)
    m = len(ups)
    up: dict[str, Any] = {}
    for b in (500, 2000, 5000, 10000):
        meter = CpuMeter()
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, m, b):
            store.upsert(name, ids[i : i + b], vecs[i : i + b], ts[i : i + b])
        dt = time.perf_counter() - t0
        client_share = round((time.process_time() - c0) / dt, 2)
        up[f"batch_{b}"] = {"upserts_per_s": round(m / dt), "client_cpu_share": client_share, **meter.done()}
    out["upsert"] = up
    store.drop(name)
    store.close()
    return out


# -- recall --------------------------------------------------------------------------------------
def trained_vectors(export: Path, data: Path, max_queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    from model.data import pad_histories, read_eval
    from model.tower import UserTower, load_items, read_manifest

    ids, vecs = load_items(export)
    tower = UserTower.load(export)
    users = read_eval(data)
    table = np.zeros((int(ids.max()) + 1, vecs.shape[1]), np.float32)
    table[ids] = vecs
    hist, lengths = pad_histories([u.hist for u in users], tower.maxlen)
    interests, n_int = tower.encode(table[hist], lengths)
    q = np.concatenate([interests[i, : max(1, int(n_int[i]))] for i in range(len(users))])
    rng = np.random.default_rng(0)
    if len(q) > max_queries:
        q = q[rng.choice(len(q), max_queries, replace=False)]
    man = read_manifest(export)
    label = (f"trained: MIND export {man['model_version']} ({len(ids)} items, dim {vecs.shape[1]}); queries = "
             f"interest vectors of the user tower on {len(users)} eval histories")
    return ids, vecs, q.astype(np.float32), label


def synthetic_vectors(n: int, dim: int, n_queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Clustered vectors (2000 centres, Zipf-ish norms): closer to trained embeddings than N(0, 1)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    which = rng.integers(0, len(centres), n)
    vecs = centres[which] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    vecs *= rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32)
    qw = rng.integers(0, len(centres), n_queries)
    q = centres[qw] + 0.5 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    label = f"SYNTHETIC clustered vectors ({n} items, 2000 clusters, dim {dim}), queries near cluster centres"
    return np.arange(1, n + 1, dtype=np.int64), vecs.astype(np.float32), q.astype(np.float32), label


def exact_topk(items: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), 256):
        sc = q[s : s + 256] @ items.T
        part = np.argpartition(-sc, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sc, part, 1), axis=1)
        out[s : s + 256] = ids[np.take_along_axis(part, order, 1)]
    return out


def cmd_recall(args: argparse.Namespace) -> dict:
    from pymilvus import MilvusClient

    k = args.top_k
    if args.synthetic:
        ids, vecs, q, label = synthetic_vectors(args.synthetic, args.dim, args.queries)
    else:
        ids, vecs, q, label = trained_vectors(Path(args.export), Path(args.data), args.queries)
    log(f"{label}: {len(q)} queries")
    t = time.perf_counter()
    truth = exact_topk(vecs, ids, q, k)
    exact_s = time.perf_counter() - t
    tag = f"rec{uuid.uuid4().hex[:6]}"
    s = load(None, overrides=[f"milvus.uri={args.uri}", *HNSW, f"milvus.collection_prefix={tag}_",
                              f"milvus.alias={tag}", "milvus.timeout_s=120", *args.override], env={})
    store = ItemStore(s.milvus)
    name = store.ensure_collection("r", vecs.shape[1])
    store.set_alias(name)
    t = time.perf_counter()
    store.upsert(name, ids, vecs, np.zeros(len(ids), np.int64))
    upsert_s = time.perf_counter() - t
    client = MilvusClient(uri=args.uri, timeout=600)
    t = time.perf_counter()
    client.flush(name)  # seal the segments, so the searches below go through HNSW, not a growing segment
    while True:
        info = client.describe_index(name, client.list_indexes(name)[0])
        if int(info.get("indexed_rows", 0)) >= len(ids) and int(info.get("pending_index_rows", 0)) == 0:
            break
        time.sleep(1)
    build_s = time.perf_counter() - t
    client.release_collection(name)  # reload: sealed, indexed segments replace the growing ones
    client.load_collection(name)
    log(f"upsert {upsert_s:.1f}s, flush + HNSW build {build_s:.1f}s ({info})")
    out: dict[str, Any] = {
        "vectors": label, "items": len(ids), "queries": len(q), "top_k": k,
        "index": dict(s.milvus.index_params), "upsert_s": round(upsert_s, 1),
        "flush_and_build_s": round(build_s, 1), "exact_numpy_all_queries_s": round(exact_s, 2),
        "server_rss_mb": rss_mb(server_pids()), "by_ef": {},
    }
    rng = np.random.default_rng(1)
    for ef in args.efs:
        st = ItemStore(s.replace(f'milvus.search_params={{"ef": {ef}}}').milvus)
        got = np.concatenate([st.search(q[i : i + 1024], k, name)[0] for i in range(0, len(q), 1024)])
        recall = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, truth, strict=True)]))
        lat: dict[str, float] = {}
        for bs, reps in ((1, 60), (64, 15), (1024, 5)):
            times = []
            for _ in range(reps):
                sel = rng.choice(len(q), bs, replace=len(q) < bs)
                t = time.perf_counter()
                st.search(q[sel], k, name)
                times.append((time.perf_counter() - t) * 1000)
            lat[f"batch_{bs}_ms_p50"] = round(statistics.median(times), 2)
            if bs == 1:
                lat["batch_1_ms_p95"] = round(float(np.percentile(times, 95)), 2)
        ex = []
        for bs in (1, 64, 1024):
            sel = rng.choice(len(q), bs, replace=len(q) < bs)
            t = time.perf_counter()
            exact_topk(vecs, ids, q[sel], k)
            ex.append(round((time.perf_counter() - t) * 1000, 2))
        out["by_ef"][str(ef)] = {"recall_at_k": round(recall, 4), **lat}
        out.setdefault("exact_numpy_ms", dict(zip(("batch_1", "batch_64", "batch_1024"), ex, strict=True)))
        st.close()
        log(f"ef={ef}: {out['by_ef'][str(ef)]}")
    good = [int(ef) for ef, r in out["by_ef"].items() if r["recall_at_k"] >= 0.95]
    out["smallest_ef_recall_ge_0.95"] = min(good) if good else None
    store.drop(name, force=True)
    store.close()
    return out


def cmd_search(args: argparse.Namespace) -> dict:
    """Server CPU per search call against a loaded collection (the recall bench's, by its alias), calls
    paced at --call-rate so the server is never saturated: what one call costs the server in its Go layers
    plus the HNSW work per query vector. Its idle CPU over the same time is measured first and subtracted.
    Query vectors are item vectors of the export (the interest capsules live in the same space)."""
    from model.tower import load_items

    s = load(None, overrides=[f"milvus.uri={args.uri}", "milvus.index_type=HNSW",
                              f'milvus.search_params={{"ef": {args.efs[0]}}}', f"milvus.alias={args.alias}",
                              *args.override], env={})
    _ids, vecs = load_items(str(args.export))
    rng = np.random.default_rng(7)
    store = ItemStore(s.milvus)
    store.search(vecs[:4], args.top_k)  # connect, load check
    pids = server_pids()
    t0, c0 = time.perf_counter(), cpu_s(pids)
    time.sleep(args.idle_s)
    idle_cores = (cpu_s(pids) - c0) / (time.perf_counter() - t0)
    out: dict[str, Any] = {"alias": args.alias, "ef": args.efs[0], "top_k": args.top_k, "calls": args.calls,
                           "call_rate": args.call_rate, "server_idle_cores": round(idle_cores, 3)}
    for nq in args.nq:
        walls, starts = [], []
        gap = 1.0 / args.call_rate
        t0, c0 = time.perf_counter(), cpu_s(pids)
        nxt = t0
        for _ in range(args.calls):
            q = vecs[rng.integers(0, len(vecs), nq)]
            t = time.perf_counter()
            store.search(q, args.top_k)
            walls.append((time.perf_counter() - t) * 1000)
            starts.append(t - t0)
            nxt += gap
            time.sleep(max(0.0, nxt - time.perf_counter()))
        wall = time.perf_counter() - t0
        server_ms = ((cpu_s(pids) - c0) - idle_cores * wall) / args.calls * 1000
        out[f"nq_{nq}"] = {"server_cpu_ms_per_call": round(server_ms, 2),
                           "server_cpu_ms_per_query": round(server_ms / nq, 3),
                           "wall_ms_p50": round(pct(walls, 50), 2), "wall_ms_p99": round(pct(walls, 99), 2),
                           "wall_ms_max": round(max(walls), 1),
                           # slow calls with their offset (s) into the run: periodic stalls show as a pattern
                           "over_100ms_at_s": [
                               round(at, 1) for at, w in zip(starts, walls, strict=True) if w > 100][:20]}
        log(json.dumps({f"nq_{nq}": out[f"nq_{nq}"]}))
    store.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["items", "profile", "recall", "search"])
    p.add_argument("--uri", default="http://127.0.0.1:19530")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--fresh-events", type=int, default=30_000)
    p.add_argument("--rate", type=float, default=0.0, help="freshness phase rate (0: half the drain rate)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sample-ms", type=float, default=20.0, help="visibility sample interval")
    p.add_argument("--profile", action="store_true", help="items: one more drain under cProfile")
    p.add_argument("--json-codec", action="store_true", help="JSON vectors instead of --binary (items)")
    p.add_argument("--export", default=str(ROOT / ".run" / "milvus-bench" / "export50k"))
    p.add_argument("--data", default=str(ROOT / ".run" / "milvus-bench" / "data50k" / "valid"))
    p.add_argument("--synthetic", type=int, default=0, help="N clustered synthetic items instead of an export")
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--efs", type=lambda v: [int(x) for x in v.split(",")], default=[50, 64, 128, 256])
    p.add_argument("--alias", default="benchrecall", help="search: the collection (alias) to search")
    p.add_argument("--nq", type=lambda v: [int(x) for x in v.split(",")], default=[1, 10, 40, 80],
                   help="search: query vectors per call")
    p.add_argument("--calls", type=int, default=300, help="search: calls per nq")
    p.add_argument("--call-rate", type=float, default=30.0, help="search: calls per second")
    p.add_argument("--idle-s", type=float, default=5.0, help="search: idle time to measure the server's baseline")
    p.add_argument("-o", "--override", action="append", default=[])
    args = p.parse_args()
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where is it stuck?
    fn = {"items": cmd_items, "profile": cmd_profile, "recall": cmd_recall, "search": cmd_search}[args.phase]
    print(json.dumps(fn(args), indent=2))


if __name__ == "__main__":
    main()
