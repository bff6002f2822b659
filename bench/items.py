"""Item path benchmark: Kafka -> item writer -> Milvus, beside the bare pymilvus upsert ceiling.

    .venv/bin/python bench/items.py [--events 100000] [--dim 64] [--rate 0] [--uri DIR/m.db]

Prints one JSON object:
  ceiling   bare ItemStore.upsert (pymilvus) in batches of worker.item_batch_max, no Kafka
  drain     a backlog of --events binary records drained by the writer: sustained upserts/s
  fresh     a producer subprocess at --rate records/s (default: half the drain rate) while the writer
            runs: freshness = event ts (stamped at send) -> Milvus acknowledged, p50/p99
Needs the local broker (scripts/kafka-local start).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mind_recall.item_wire import ItemEvent  # noqa: E402
from mind_recall.settings import Settings, load  # noqa: E402
from producers.items import publish, synthetic_updates  # noqa: E402
from worker.item_writer import ItemWriter  # noqa: E402
from worker.metrics import Metrics  # noqa: E402
from worker.store import ItemStore  # noqa: E402


def _settings(base: list[str], tag: str, uri: str) -> Settings:
    u = uuid.uuid4().hex[:8]
    return load(
        None,
        overrides=[
            *base,
            f"topics.item_embeddings=bench-items-{tag}-{u}",
            f"topics.dlq=bench-dlq-{u}",
            f"worker.item_writer_group=bench-writer-{u}",
            f"milvus.uri={uri}",
            "metrics.enabled=false",
        ],
        env={},
    )


def ceiling(s: Settings, n: int, dim: int) -> dict:
    store = ItemStore(s.milvus)
    name = store.ensure_collection("ceiling", dim)
    rng = np.random.default_rng(0)
    b = s.worker.item_batch_max
    ids = np.arange(1, n + 1, dtype=np.int64)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    ts = np.zeros(n, np.int64)
    store.upsert(name, ids[:b], vecs[:b], ts[:b])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, n, b):
        store.upsert(name, ids[i : i + b], vecs[i : i + b], ts[i : i + b])
    dt = time.perf_counter() - t0
    store.drop(name)
    store.close()
    return {"rows": n, "batch": b, "seconds": round(dt, 3), "upserts_per_s": round(n / dt)}


class Probe:
    """on_ack hook: counts applied events and records freshness (ack - event ts)."""

    def __init__(self, want: int, writer_ref: list) -> None:
        self.want, self.writer_ref = want, writer_ref
        self.n = 0
        self.first = self.last = 0.0
        self.fresh_ms: list[int] = []

    def __call__(self, events: list[ItemEvent], ack_ms: int) -> None:
        now = time.perf_counter()
        if not self.n:
            self.first = now
        self.last = now
        self.n += len(events)
        self.fresh_ms.extend(ack_ms - e.ts for e in events)
        if self.n >= self.want:
            self.writer_ref[0].stop()


def drain(s: Settings, n: int, dim: int) -> dict:
    events = synthetic_updates(n, dim, n // 2, 0.02, seed=1, model_version="bench", new_ratio=0.3)
    t0 = time.perf_counter()
    publish(s, events, total=n, binary=True, progress=False)
    produce_s = time.perf_counter() - t0
    ref: list = [None]
    probe = Probe(10**12, ref)
    writer = ItemWriter(s, Metrics(), on_ack=probe)
    ref[0] = writer
    # last-write-wins collapses repeats inside a batch: count records committed, not rows written
    t1 = time.perf_counter()
    writer.run(idle_exit_s=3.0)
    wall = time.perf_counter() - t1 - 3.0
    batches = writer.metrics.registry.get_sample_value("mind_recall_item_batch_size_count") or 0
    return {
        "records": writer.committed,
        "produce_records_per_s": round(n / produce_s),
        "seconds_incl_group_join": round(wall, 2),
        # first to last Milvus ack; the first batch's records are not in the window, so leave them out
        "records_per_s": round(
            writer.committed * (batches - 1) / max(batches, 1) / max(probe.last - probe.first, 1e-9)
        ),
        "batches": int(batches),
    }


def fresh(s: Settings, n: int, dim: int, rate: float) -> dict:
    ref: list = [None]
    probe = Probe(1, ref)  # set below, once the writer is assigned
    writer = ItemWriter(s, Metrics(), on_ack=probe)
    ref[0] = writer
    probe.want = 10**12
    th = threading.Thread(target=writer.run, daemon=True)
    th.start()
    from worker import kafka_io

    kafka_io.ensure_item_topic(s)
    deadline = time.monotonic() + 30
    while (writer._consumer is None or not writer._consumer.assignment()) and time.monotonic() < deadline:
        time.sleep(0.1)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(s.dump(mask_secrets=False))
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "produce",
            "item-updates",
            "-m",
            f.name,
            "-o",
            "runner.progress=false",
            "--count",
            str(n),
            "--dim",
            str(dim),
            "--items",
            str(n // 2),
            "--delete-ratio",
            "0.02",
            "--model-version",
            "bench",
            "--rate",
            str(rate),
            "--binary",
            "--seed",
            "2",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    produce_s = time.perf_counter() - t0
    deadline = time.monotonic() + 60
    while writer.committed < n and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.stop()
    th.join(30)
    f_ms = np.array(probe.fresh_ms, np.float64)
    return {
        "records": n,
        "target_rate": rate,
        "achieved_rate": round(n / produce_s),
        "applied_events": probe.n,
        "freshness_ms": {
            "p50": round(float(np.percentile(f_ms, 50)), 1),
            "p99": round(float(np.percentile(f_ms, 99)), 1),
            "max": round(float(f_ms.max()), 1),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0, help="freshness phase rate (0: half the drain rate)")
    p.add_argument("--fresh-events", type=int, default=30_000)
    p.add_argument("--uri", default=None, help="Milvus URI (default: a fresh Milvus Lite file)")
    p.add_argument("-o", "--override", action="append", default=[])
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-items-")
    uri = args.uri or f"{tmp}/milvus.db"
    base = [f"hyper_parameters.embedding_dim={args.dim}", *args.override]
    out: dict = {"dim": args.dim, "milvus": "lite" if "://" not in uri else uri}
    s = _settings(base, "c", uri)
    out["ceiling"] = ceiling(s, args.events, args.dim)
    out["drain"] = drain(_settings(base, "d", uri), args.events, args.dim)
    rate = args.rate or max(1000.0, round(out["drain"]["records_per_s"] / 2, -2))
    out["fresh"] = fresh(_settings(base, "f", uri), args.fresh_events, args.dim, rate)
    out["writer_vs_ceiling"] = round(out["drain"]["records_per_s"] / out["ceiling"]["upserts_per_s"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
