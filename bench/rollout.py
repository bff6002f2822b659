"""Model rollout under load: a hot switch (worker/model_watch.py) against the restart it replaces.

Both modes run the same thing: a recall worker serving model A, open-loop Kafka recall requests at
``--rate`` for ``--duration`` s, and a new model B (the same data, another training seed) rolled out a
third of the way in.
- ``hot``: `items rollout` fills B's collection and announces B; the worker switches without a restart.
- ``restart``: the baseline. The worker is stopped and started again with B's export (it fills B's
  collection on start, as `--load-items` does).

Latency is request ts -> result produced, per second of sending (``p99_by_second_ms``). A restart shows up
as a stall: requests sent while no worker is up wait. Prints one JSON object; never asserts.

    .venv/bin/python bench/rollout.py [--rate 50 --duration 30 --users 2000 --items 5000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mind_recall.settings import Settings, load  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_exports(work: Path, users: int, items: int, batches: int) -> tuple[Path, Path, dict[int, Any]]:
    """One synthetic dataset, two models (training seeds 1 and 2), two exports."""
    from model.data import read_train
    from model.export import export_checkpoint
    from model.synth import write_dataset
    from model.trainer import train

    write_dataset(work / "data", users=users, items=items, seed=3)
    exports = []
    for seed in (1, 2):
        s = load(None, overrides=[
            f"runner.train_data_dir={work / 'data' / 'train'}", f"runner.test_data_dir={work / 'data' / 'valid'}",
            f"runner.model_save_path={work / f'ckpt{seed}'}", f"runner.seed={seed}", "runner.epochs=1",
            f"runner.batches_per_epoch={batches}", "runner.progress=false",
        ], env={})
        train(s)
        export_checkpoint(s, work / f"export{seed}")
        exports.append(work / f"export{seed}")
    return exports[0], exports[1], dict(read_train(work / "data" / "train"))


def run_mode(mode: str, base: Settings, work: Path, a: Path, b: Path, seqs: dict[int, Any],
             rate: float, duration: float) -> dict[str, Any]:
    from producers.traffic import run_open_loop
    from worker.app import App
    from worker.rollout import announce_live, rollout

    prefix = f"bench-rollout-{mode}-{uuid.uuid4().hex[:6]}"
    topics = ["clicks", "item_embeddings", "recall_requests", "recall_results", "dlq", "history_changelog",
              "model_control"]
    s = base.replace(
        *[f"topics.{t}={prefix}-{t}" for t in topics], f"worker.group_id={prefix}",
        f"milvus.uri={work / f'{mode}.db'}", "topics.partitions=2", "metrics.enabled=false",
        "worker.follow_rollouts=" + ("true" if mode == "hot" else "false"),
    )
    users = sorted(seqs)[:2000]
    result: dict[str, Any] = {}
    app = App(s, roles=("recall",), export_dir=str(a), load_items=True).start()
    load_thread = threading.Thread(target=lambda: result.update(run_open_loop(
        s, rate=rate, duration=duration, user_ids=users, top_k=50,
        hist_of=lambda u: [int(i) for i in seqs[u][-20:]], drain_s=60)), daemon=True)
    load_thread.start()
    time.sleep(duration / 3)
    t0 = time.monotonic()
    try:
        if mode == "hot":
            live = rollout(app.store, b)
            announce_live(s, app.store, live, b)
            switched = app.watcher.switched.wait(120)
            served = app.served_version()
        else:
            app.stop()
            app = App(s, roles=("recall",), export_dir=str(b), load_items=True).start()
            switched, served = True, app.served_version()
        switch_s = time.monotonic() - t0
        log(f"{mode}: serving {served} after {switch_s:.1f}s")
        load_thread.join(duration + 120)
    finally:
        app.stop()
        try:
            from worker import kafka_io

            kafka_io.delete_topics(s, [t for t in kafka_io.list_topics(s) if t.startswith(prefix)])
        except Exception as e:  # best effort: the results are measured
            log(f"could not delete {prefix}*: {e}")
    per_s = [v for v in result.get("p99_by_second_ms", []) if v is not None]
    return {
        "switched": switched, "served_after": served, "switch_s": round(switch_s, 2),
        "sent": result.get("sent"), "received": result.get("received"), "errors": result.get("errors"),
        "latency_ms": result.get("latency_ms"), "worst_second_p99_ms": max(per_s, default=None),
        "p99_by_second_ms": result.get("p99_by_second_ms"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--train-batches", type=int, default=150)
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--json", default=None, metavar="OUT")
    args = p.parse_args()
    from mind_recall import logs

    logs.setup("WARNING")  # also quiets Milvus Lite's harmless "AllocTimestamp not implemented" tracebacks
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    try:
        base = load(None, overrides=[f"kafka.bootstrap_servers={args.bootstrap}"], env={})
        t0 = time.perf_counter()
        a, b, seqs = build_exports(work, args.users, args.items, args.train_batches)
        log(f"two models trained and exported in {time.perf_counter() - t0:.0f}s")
        out: dict[str, Any] = {"config": vars(args)}
        for mode in ("hot", "restart"):
            out[mode] = run_mode(mode, base, work, a, b, seqs, args.rate, args.duration)
        hot, restart = out["hot"], out["restart"]
        if hot["worst_second_p99_ms"] and restart["worst_second_p99_ms"]:
            out["restart_over_hot_worst_second_p99"] = round(
                restart["worst_second_p99_ms"] / hot["worst_second_p99_ms"], 1)
        text = json.dumps(out, indent=1)
        print(text)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
