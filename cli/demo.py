"""``mind-recall demo``: the whole job end to end on the embedded defaults, in minutes.

Generates data with planted interests, trains a small MIND, exports it, starts the worker (item writer,
recall worker, HTTP API, metrics: one process, Milvus Lite), publishes the item vectors and the users'
clicks to Kafka, sends recall requests, and prints what came back, item freshness and stage latencies.
It stops what it started. It needs a Kafka broker (``./run demo`` starts the local one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from mind_recall.cliargs import add_config_args
from mind_recall.item_wire import encode_item_event, now_ms
from mind_recall.settings import Settings
from mind_recall.wire import encode_request, user_key

STAGES = ("encode", "search", "merge", "publish")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]

    p = sub.add_parser("demo", help="end-to-end demo on the embedded defaults (local Kafka + Milvus Lite)")
    add_config_args(p)
    p.add_argument("--workdir", default=".run/demo", help="where data, model, export and Milvus Lite go (wiped)")
    p.add_argument("--users", type=int, default=3000, help="synthetic users (train + eval)")
    p.add_argument("--items", type=int, default=2000, help="synthetic items")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--requests", type=int, default=200, help="recall requests in the load phase")
    p.add_argument("--rate", type=float, default=40.0,
                   help="recall requests per second in the load phase (Milvus Lite saturates near 100 on 2 cores)")
    p.add_argument("--show", type=int, default=3, help="users to print")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep-running", action="store_true", help="keep the worker and HTTP API up until Ctrl-C")
    p.set_defaults(handler=run_demo)


def _step(msg: str) -> float:
    print(f"\n== {msg}", flush=True)
    return time.monotonic()


def _done(t0: float, what: str = "done") -> None:
    print(f"   {what} in {time.monotonic() - t0:.1f} s", flush=True)


def demo_settings(base: Settings, workdir: Path, seed: int, epochs: int) -> Settings:
    """Per-run topics (Kafka keeps old runs' data) and everything else under ``workdir``."""
    run = f"demo-{int(time.time())}-{uuid.uuid4().hex[:4]}"
    topics = ("clicks", "item_embeddings", "recall_requests", "recall_results", "dlq", "history_changelog")
    return base.replace(
        f"runner.train_data_dir={workdir / 'data' / 'train'}",
        f"runner.test_data_dir={workdir / 'data' / 'valid'}",
        f"runner.model_save_path={workdir / 'model'}",
        f"runner.epochs={epochs}",
        f"runner.seed={seed}",
        f"milvus.uri={workdir / 'milvus-lite.db'}",
        f"worker.export_dir={workdir / 'export'}",
        f"worker.group_id={run}-workers",
        f"worker.item_writer_group={run}-writer",
        "metrics.port=0",
        "http.port=0",
        *(f"topics.{t}={run}-{t.replace('_', '-')}" for t in topics),
    )


def histogram_quantile(metrics: Any, name: str, q: float, labels: dict[str, str] | None = None) -> float | None:
    """Prometheus-style quantile (linear within the bucket) from one of our histograms, in seconds."""
    buckets: list[tuple[float, float]] = []
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name != f"{name}_bucket":
                continue
            if labels and any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.1f} ms"


def _collect_results(settings: Settings, want: set[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    from worker import kafka_io

    consumer = kafka_io.make_reader(settings)
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign_from(dict.fromkeys(kafka_io.topic_partitions(consumer, settings.topics.recall_results)))
        while want - set(got) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    body = json.loads(r.value or b"{}")
                    if body.get("request_id") in want:
                        got[body["request_id"]] = body
    finally:
        consumer.close()
    return got


def run_demo(base: Settings, args: argparse.Namespace) -> int:
    import logging
    import os
    import warnings

    from model import synth
    from model.data import read_eval, read_train
    from model.export import export_checkpoint
    from model.trainer import train
    from producers.items import publish
    from producers.traffic import replay_clicks, run_open_loop
    from worker import kafka_io
    from worker.app import App
    from worker.items import load_export

    if args.log_level is None:  # the demo prints its own story; components' INFO logs would drown it
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("kafka").setLevel(logging.ERROR)
        os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO lines
        warnings.filterwarnings("ignore", category=UserWarning)
    started = time.monotonic()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    s = demo_settings(base, workdir, args.seed, args.epochs)
    print(f"mind-recall demo: Kafka {s.kafka.bootstrap_servers}, Milvus Lite {s.milvus.uri}, workdir {workdir}")

    t0 = _step(f"1/7 generate data: {args.users} users, {args.items} items with planted interests")
    synth.write_dataset(workdir / "data", users=args.users, items=args.items, seed=args.seed)
    _done(t0)

    t0 = _step(f"2/7 train MIND ({args.epochs} epochs, CPU unless runner.use_gpu and a GPU)")
    train(s)
    _done(t0)

    t0 = _step("3/7 export item vectors and the user tower")
    manifest = export_checkpoint(s, s.worker.export_dir)
    version = manifest["model_version"]
    print(f"   model_version {version}, dim {manifest['dim']}, K {manifest['k']}")
    _done(t0)

    t0 = _step("4/7 start the worker: item writer + recall worker + HTTP API + metrics (one process)")
    app = App(s, export_dir=s.worker.export_dir).start()
    base_url = f"http://{s.http.host}:{app.http_port}"
    _done(t0)
    try:
        t0 = _step("5/7 publish item vectors and replay clicks through Kafka")
        _, _, ids, vectors, _ = load_export(s.worker.export_dir)
        coll = app.store.ensure_collection(version, int(manifest["dim"]))  # what `items rollout` does first
        app.store.set_alias(coll)
        events = ((int(i), v, version, now_ms()) for i, v in zip(ids, vectors, strict=True))
        n_items = publish(s, events, total=len(ids), progress=False)
        deadline = time.monotonic() + 120
        while app.store.count(coll) < n_items and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"   {app.store.count(coll)} / {n_items} item vectors in Milvus collection {coll}")
        eval_users = read_eval(s.runner.test_data_dir)
        train_seqs = read_train(s.runner.train_data_dir)
        shown = sorted(train_seqs)[: max(args.show, 1) * 20]
        n_clicks = replay_clicks(s, s.runner.train_data_dir, users=len(shown))
        print(f"   {n_clicks} clicks from {len(shown)} users")
        _done(t0)

        t0 = _step("6/7 recall: requests in, top-k candidates out on the results topic")
        producer = kafka_io.make_producer(s)
        want: dict[str, int] = {}
        for u in shown[: args.show]:
            rid = f"demo-{u}-{uuid.uuid4().hex[:6]}"
            want[rid] = u
            producer.send(s.topics.recall_requests, key=user_key(u),
                          value=encode_request(rid, u, 10, now_ms()))
        producer.flush()
        results = _collect_results(s, set(want), timeout_s=60)
        for rid, u in want.items():
            body = results.get(rid)
            recent = train_seqs[u][-8:].tolist()
            print(f"   user {u}: recent clicks {recent}")
            if body is None:
                print("     (no result within 60 s)")
                continue
            items = ", ".join(f"{it['item_id']}:{it['score']:.2f}" for it in body["items"][:10])
            print(f"     -> {body['source']} via {body['n_interests']} interests: {items}")
        load = run_open_loop(s, rate=args.rate, duration=args.requests / args.rate, user_ids=shown, top_k=50)
        print(f"   load: {json.dumps(load)}")
        # the same user through the synchronous HTTP API
        import httpx

        hist = [eval_users[0].hist.tolist()[-20:]]
        resp = httpx.post(f"{base_url}/rec/recall", json={"top_k": 5, "hist_item": hist}, timeout=30)
        print(f"   HTTP POST /rec/recall -> {resp.status_code} {resp.text[:160]}")
        _done(t0)

        t0 = _step("7/7 item freshness: a brand-new item, published to Kafka, searchable in Milvus")
        new_id = int(ids.max()) + 1
        vec = np.asarray(vectors[0], dtype=np.float32)
        sent = time.monotonic()
        key, value = encode_item_event(new_id, vec, version, now_ms())
        producer.send(s.topics.item_embeddings, key=key, value=value)
        producer.flush()
        producer.close()
        visible = None
        while time.monotonic() - sent < 30:
            found, _ = app.store.get_vectors(np.array([new_id], dtype=np.int64))
            if len(found):
                visible = time.monotonic() - sent
                break
            time.sleep(0.01)
        print(f"   item {new_id} visible after {_ms(visible)}")
        m = app.metrics
        fresh = f"{s.metrics.namespace}_item_freshness_seconds"
        print(f"   item freshness (event -> Milvus ack) p50 {_ms(histogram_quantile(m, fresh, 0.5))}"
              f", p99 {_ms(histogram_quantile(m, fresh, 0.99))}")
        _done(t0)

        print("\n== summary")
        lat = f"{s.metrics.namespace}_recall_latency_seconds"
        print(f"   recall latency (request ts -> result) p50 {_ms(histogram_quantile(m, lat, 0.5))}"
              f", p99 {_ms(histogram_quantile(m, lat, 0.99))}")
        for stage in STAGES:
            name = f"{s.metrics.namespace}_recall_stage_seconds"
            p50 = histogram_quantile(m, name, 0.5, {"stage": stage})
            p99 = histogram_quantile(m, name, 0.99, {"stage": stage})
            print(f"   stage {stage:<8} p50 {_ms(p50):>10}  p99 {_ms(p99):>10}  (per micro-batch)")
        print(f"   metrics: http://{s.metrics.host}:{app.metrics_port}/metrics   API docs: {base_url}/docs")
        if app.errors:
            print(f"   worker errors: {app.errors}")
        print(f"   total {time.monotonic() - started:.0f} s")
        if args.keep_running:
            print("   running until Ctrl-C ...")
            with contextlib.suppress(KeyboardInterrupt):
                app.wait()
        return 1 if app.errors else 0
    finally:
        app.stop()
