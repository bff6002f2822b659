"""``mind-recall produce items`` (an export's vectors) and ``produce item-updates`` (a synthetic stream).

Both publish to [item-embeddings] keyed by item id, in the codec of worker/items.py; ``--binary``
uses the compact ``vector_b64`` form.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from mind_recall.cliargs import add_config_args
from mind_recall.item_wire import encode_item_event, now_ms
from mind_recall.settings import Settings

Event = tuple[int, "np.ndarray | None", str, int]  # (item_id, vector or None = delete, model_version, ts)


def add_produce_commands(produce_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]

    p = produce_sub.add_parser("items", help="publish an export's item vectors to [item-embeddings]")
    add_config_args(p)
    p.add_argument("--export", required=True, metavar="DIR", help="export dir (manifest.json + items.npz)")
    p.add_argument("--rate", type=float, default=0.0, help="records per second (0: as fast as possible)")
    p.add_argument("--binary", action="store_true", help="vector_b64 instead of a JSON float list")
    p.set_defaults(handler=_produce_items)

    u = produce_sub.add_parser(
        "item-updates", help="publish a synthetic stream of updates, new items and deletes"
    )
    add_config_args(u)
    u.add_argument("--count", type=int, required=True, help="events to publish")
    u.add_argument(
        "--dim", type=int, default=None, help="vector dim (default hyper_parameters.embedding_dim)"
    )
    u.add_argument("--items", type=int, default=1000, help="existing catalogue ids 1..M (updates hit these)")
    u.add_argument("--delete-ratio", type=float, default=0.05)
    u.add_argument("--new-ratio", type=float, default=0.1, help="share of events that add a new item")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--model-version", default="synthetic-v1")
    u.add_argument("--rate", type=float, default=0.0)
    u.add_argument("--binary", action="store_true")
    u.set_defaults(handler=_produce_updates)


def synthetic_updates(
    count: int,
    dim: int,
    items: int,
    delete_ratio: float,
    seed: int,
    model_version: str,
    new_ratio: float = 0.1,
    ts0: int | None = None,
) -> Iterator[Event]:
    """Updates of ids 1..items (with repeats), new ids above, deletes of live ids; ts strictly increasing."""
    if not 0 <= delete_ratio <= 1 or not 0 <= new_ratio <= 1 or delete_ratio + new_ratio > 1:
        raise ValueError("need 0 <= delete_ratio, new_ratio and delete_ratio + new_ratio <= 1")
    rng = np.random.default_rng(seed)
    ts = int(time.time() * 1000) if ts0 is None else ts0
    next_new = items + 1
    for i in range(count):
        u = rng.random()
        if u < delete_ratio:
            yield int(rng.integers(1, next_new)), None, model_version, ts + i
            continue
        if u < delete_ratio + new_ratio:
            item_id, next_new = next_new, next_new + 1
        else:
            item_id = int(rng.integers(1, next_new))
        yield item_id, rng.standard_normal(dim).astype(np.float32), model_version, ts + i


def publish(
    settings: Settings,
    events: Iterable[Event],
    total: int | None = None,
    rate: float = 0.0,
    binary: bool = False,
    progress: bool = True,
    live_ts: bool = False,
) -> int:
    """Send events to [item-embeddings]; ``live_ts`` stamps each with the send time (freshness probes)."""
    from worker import kafka_io

    kafka_io.ensure_item_topic(settings)
    producer = kafka_io.make_producer(settings, linger_ms=20)
    topic = settings.topics.item_embeddings
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="rec", desc=f"produce {topic}")
    t0, n = time.monotonic(), 0
    try:
        for item_id, vec, version, ts in events:
            if rate > 0:
                wait = t0 + n / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            key, value = encode_item_event(item_id, vec, version, now_ms() if live_ts else ts, binary=binary)
            producer.send(topic, key=key, value=value)
            n += 1
            if bar is not None and n % 1000 == 0:
                bar.update(1000)
        producer.flush()
    finally:
        if bar is not None:
            bar.update(n % 1000)
            bar.close()
        producer.close(timeout=10)
    return n


def _produce_items(settings: Settings, args: argparse.Namespace) -> int:
    from worker.items import load_export

    version, _dim, ids, vecs, _created = load_export(args.export)
    ts = now_ms()
    events = ((int(i), vecs[j], version, ts) for j, i in enumerate(ids.tolist()))
    n = publish(
        settings,
        events,
        total=len(ids),
        rate=args.rate,
        binary=args.binary,
        progress=settings.runner.progress,
    )
    print(f"published {n} item vectors of model_version {version} to {settings.topics.item_embeddings}")
    return 0


def _produce_updates(settings: Settings, args: argparse.Namespace) -> int:
    dim = args.dim or settings.hyper_parameters.embedding_dim
    events = synthetic_updates(
        args.count,
        dim,
        args.items,
        args.delete_ratio,
        args.seed,
        args.model_version,
        new_ratio=args.new_ratio,
    )
    n = publish(
        settings,
        events,
        total=args.count,
        rate=args.rate,
        binary=args.binary,
        progress=settings.runner.progress,
        live_ts=args.rate > 0,
    )
    print(f"published {n} item events ({args.model_version}, dim {dim}) to {settings.topics.item_embeddings}")
    return 0
