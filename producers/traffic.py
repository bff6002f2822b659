"""``mind-recall produce clicks`` (replay a train file as click events) and
``mind-recall produce requests`` (an open-loop recall-request load generator).

Open loop: request i is sent at start + i/rate whatever the service does, so a slow service shows
up as latency and a growing backlog, not as a politely reduced offered load. With
``--wait-results`` the generator also reads the results topic and reports throughput and latency
(request ts -> result produced, and request ts -> result received).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mind_recall.cliargs import add_config_args
from mind_recall.settings import Settings
from mind_recall.wire import encode_click, encode_request, user_key

log = logging.getLogger(__name__)


def replay_clicks(settings: Settings, data_dir: str | Path, *, users: int | None = None, rate: float = 0.0) -> int:
    """Publish every user's training sequence (in order) as clicks; returns the number sent."""
    from model.data import read_train
    from worker import kafka_io

    seqs = read_train(data_dir)
    chosen = sorted(seqs)[:users] if users else sorted(seqs)
    t = settings.topics
    kafka_io.ensure_topics(settings, {t.clicks: t.partitions})
    producer = kafka_io.make_producer(settings, linger_ms=20)
    n, start = 0, time.monotonic()
    base_ts = int(time.time() * 1000)
    try:
        for u in chosen:
            for item in seqs[u]:
                producer.send(t.clicks, key=user_key(u), value=encode_click(u, int(item), base_ts + n))
                n += 1
                if rate > 0:
                    wait = start + n / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
        producer.flush()
    finally:
        producer.close()
    return n


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def run_open_loop(
    settings: Settings,
    *,
    rate: float,
    duration: float,
    user_ids: Sequence[int],
    top_k: int = 50,
    hist_of: Callable[[int], Sequence[int] | None] | None = None,
    wait_results: bool = True,
    drain_s: float = 10.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Send ``rate`` requests/s for ``duration`` s to random users; with ``wait_results``, collect results.

    Returns sent/received counts, achieved throughput and latency percentiles (ms). ``hist_of(user)``
    supplies an explicit hist_item (None: the worker's stored history).
    """
    from worker import kafka_io

    t = settings.topics
    kafka_io.ensure_topics(settings, {t.recall_requests: t.partitions, t.recall_results: t.partitions})
    rng = np.random.default_rng(seed)
    run_id = uuid.uuid4().hex[:8]
    sent_ts: dict[str, int] = {}
    got: dict[str, tuple[int, int, int]] = {}  # request_id -> (request_ts, produced_ts, received_ms)
    errors = 0
    stop = threading.Event()
    consumer = None
    ready = threading.Event()

    def collect() -> None:
        nonlocal errors
        assert consumer is not None
        ready.set()
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=100, max_records=5000).values():
                now = int(time.time() * 1000)
                for r in records:
                    try:
                        body = orjson.loads(r.value)  # the reader shares the cores it measures: keep it cheap
                    except (TypeError, ValueError):
                        continue
                    rid = body.get("request_id")
                    if rid in sent_ts and rid not in got:
                        if "error" in body:
                            errors += 1
                        got[rid] = (int(body.get("request_ts") or 0), int(body.get("produced_ts") or 0), now)

    if wait_results:
        consumer = kafka_io.make_reader(settings)  # librdkafka: the reader shares the cores it measures
        # resolved now, before the first request goes out
        consumer.assign_at_end([kafka_io.TopicPartition(t.recall_results, p) for p in range(t.partitions)])
        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        ready.wait(10)
    # Not idempotent: an idempotent producer holds its first records ~0.5 s until the broker hands it a
    # producer id, which would land in the first latencies of every rate. One request in flight keeps
    # the order; a retried duplicate is answered twice and counted once (results are keyed by request id).
    producer = kafka_io.make_producer(settings, linger_ms=1, **{"enable.idempotence": False, "max.in.flight": 1})
    # An upstream service sends on a warm connection; a cold producer held the first ~100 requests of a
    # rate 50-200 ms for metadata, which is the generator's start-up, not the recall path's latency.
    producer.warm_up(t.recall_requests)
    users = np.asarray(user_ids, dtype=np.int64)
    n_total = max(1, int(rate * duration))
    start = time.monotonic()
    late = 0.0
    for i in range(n_total):
        due = start + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            late = max(late, -wait)
        u = int(users[rng.integers(users.size)])
        rid = f"{run_id}-{i}"
        ts = int(time.time() * 1000)
        sent_ts[rid] = ts
        hist = hist_of(u) if hist_of else None
        producer.send(t.recall_requests, key=user_key(u), value=encode_request(rid, u, top_k, ts, hist))
    producer.flush()
    send_s = time.monotonic() - start
    producer.close()
    out: dict[str, Any] = {
        "offered_rps": rate,
        "duration_s": duration,
        "sent": n_total,
        "send_s": round(send_s, 3),
        "max_send_lag_ms": round(late * 1000, 1),
    }
    if wait_results:
        deadline = time.monotonic() + drain_s
        while len(got) < n_total and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        reader.join(5)
        if consumer is not None:
            consumer.close()
        vals = list(got.values())
        service = [max(0, p - q) for q, p, _ in vals if q and p]
        e2e = [max(0, r - sent_ts[rid]) for rid, (_, _, r) in got.items()]
        first = min(sent_ts.values())
        last_recv = max((r for _, _, r in vals), default=first)
        out.update(
            {
                "received": len(got),
                "errors": errors,
                "throughput_rps": round(len(got) / max(1e-3, (last_recv - first) / 1000), 1),
                "latency_ms": {
                    "p50": _pct(service, 50),
                    "p99": _pct(service, 99),
                    "max": max(service, default=None),
                },
                "e2e_ms": {"p50": _pct(e2e, 50), "p99": _pct(e2e, 99)},
                # by second of sending: a tail spread over every second is queueing, one in a few
                # seconds is a stall (a pause of some process) worth finding
                "p99_by_second_ms": _by_second(
                    [(q - first, max(0, p - q)) for q, p, _ in vals if q and p], 99
                ),
            }
        )
    return out


def _by_second(points: list[tuple[int, int]], q: float) -> list[float | None]:
    """Percentile ``q`` of the values per whole second of their offset (ms); seconds without values: None."""
    per: dict[int, list[int]] = {}
    for off_ms, v in points:
        per.setdefault(off_ms // 1000, []).append(v)
    return [round(float(np.percentile(per[sec], q)), 1) if sec in per else None
            for sec in range(max(per, default=-1) + 1)]


def _clicks(settings: Settings, args: argparse.Namespace) -> int:
    n = replay_clicks(settings, args.data, users=args.users, rate=args.rate)
    print(json.dumps({"clicks": n, "topic": settings.topics.clicks}))
    return 0


def _requests(settings: Settings, args: argparse.Namespace) -> int:
    if args.rate <= 0 or args.duration <= 0:
        print("mind-recall produce requests: --rate and --duration must be > 0", file=sys.stderr)
        return 2
    if args.data:
        from model.data import read_train

        users: Sequence[int] = sorted(read_train(args.data))
    else:
        users = range(args.users)
    res = run_open_loop(
        settings,
        rate=args.rate,
        duration=args.duration,
        user_ids=list(users),
        top_k=args.top_k or settings.worker.default_top_k,
        wait_results=args.wait_results,
        drain_s=args.drain_s,
        seed=args.seed,
    )
    print(json.dumps(res))
    return 0


def add_produce_commands(produce_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]

    c = produce_sub.add_parser("clicks", help="replay a train file/dir (uid,item_id,order) as click events")
    add_config_args(c)
    c.add_argument("--data", required=True, metavar="DIR", help="train file or directory")
    c.add_argument("--users", type=int, default=None, help="only the first N users (by id)")
    c.add_argument("--rate", type=float, default=0.0, help="clicks per second (0: as fast as possible)")
    c.set_defaults(handler=_clicks)

    r = produce_sub.add_parser("requests", help="open-loop recall-request load generator")
    add_config_args(r)
    r.add_argument("--rate", type=float, required=True, help="requests per second (open loop)")
    r.add_argument("--duration", type=float, required=True, help="seconds")
    r.add_argument("--data", metavar="DIR", help="draw user ids from this train file/dir")
    r.add_argument("--users", type=int, default=1000, help="else draw from 0..N-1")
    r.add_argument("--top-k", type=int, default=None, help="default: worker.default_top_k")
    r.add_argument("--wait-results", action="store_true", help="read the results topic and report latency")
    r.add_argument("--drain-s", type=float, default=10.0, help="how long to wait for the last results")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(handler=_requests)
