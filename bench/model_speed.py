"""Model speed: training samples/s with dense vs sparse embedding gradients on a 368k-item table (and
sparse with 20 co-occurrence neighbours per item, the default from 2026-12-06 until 2026-12-07; the
default is now 40 with learned rank weights, timed end to end by bench/quality.py), and
user-tower latency at batch 1 / 32 / 256 with dygraph vs Paddle Inference (vs Inference + oneDNN).

    .venv/bin/python bench/model_speed.py [--items 367982] [--steps 40] [--iters 300]
    .venv/bin/python bench/model_speed.py --part train-sparse-cooc --data ~/.cache/mind-recall/data/Beauty/train

Each training mode runs in its own process (so peak RSS is per mode). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)


def train_mode(
    sparse: bool, items: int, steps: int, warmup: int, batch: int, negs: int, cooc: int = 0, data: str = ""
) -> dict:
    """Median step time of the real train_step on random ComiRec-shaped batches (``cooc``: that many
    random co-occurrence neighbours per item, as ``hyper_parameters.cooc_neighbors``). With ``data``
    (a converted dataset's train/ directory) the batches are its real ComiRec samples and the
    neighbours its real co-occurrence table, as training builds it."""
    if data:
        return _train_real(data, steps, warmup, batch, negs, cooc)
    _quiet()
    import paddle

    from model.data import Batch
    from model.network import NetConfig, RecallNetwork
    from model.sampler import LogUniformSampler

    paddle.set_device("cpu")
    paddle.seed(0)
    rng = np.random.default_rng(0)
    pop = rng.zipf(1.3, items + 1).astype(np.int64)
    cfg = NetConfig(item_count=items + 1, sparse_embedding=sparse, cooc_neighbors=cooc)
    net = RecallNetwork(cfg)
    if cooc:
        ids = np.concatenate([np.arange(items + 1)[:, None], rng.integers(1, items + 1, (items + 1, cooc))], axis=1)
        w = np.concatenate([np.ones((items + 1, 1)), np.full((items + 1, cooc), 1.0 / cooc)], axis=1)
        ids[0], w[0] = 0, 0.0
        net.set_cooc(ids, w.astype(np.float32))
    opt = paddle.optimizer.Adam(0.005, parameters=net.parameters(), lazy_mode=sparse)
    sampler = LogUniformSampler(pop, 1)

    def random_batches() -> Iterator[Batch]:
        for _ in range(warmup + steps):
            lengths = rng.integers(4, 21, size=batch)
            hist = rng.integers(1, items + 1, size=(batch, 20))
            hist[np.arange(20)[None, :] >= lengths[:, None]] = 0
            yield Batch(hist.astype(np.int64), lengths.astype(np.int64), rng.integers(1, items + 1, size=batch))

    times = _step_times(net, opt, sampler, random_batches(), negs, None, warmup)
    med = float(np.median(times))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "embedding_grad": "sparse" if sparse else "dense", "cooc_neighbors": cooc, "items": items, "batch": batch,
        "neg_samples": negs, "steps": steps, "step_ms_p50": round(med * 1e3, 2),
        "step_ms_p90": round(float(np.percentile(times, 90)) * 1e3, 2),
        "samples_per_s": round(batch / med, 1), "peak_rss_mb": round(rss_mb, 1),
    }


def _step_times(
    net: Any, opt: Any, sampler: Any, batches: Iterable[Any], negs: int, rng: np.random.Generator | None, warmup: int
) -> list[float]:
    """Seconds of each real ``train_step`` after the first ``warmup`` batches."""
    from model.trainer import train_step

    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        train_step(net, opt, sampler, b, negs, rng)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _train_real(data: str, steps: int, warmup: int, batch: int, negs: int, cooc: int) -> dict:
    import paddle

    from model.cooc import cooc_neighbors
    from model.data import TrainSamples, item_popularity, read_train
    from model.network import NetConfig, RecallNetwork
    from model.sampler import LogUniformSampler

    paddle.set_device("cpu")
    paddle.seed(0)
    seqs = read_train(data)
    item_count = 1 + max(int(s.max()) for s in seqs.values())
    net = RecallNetwork(NetConfig(item_count=item_count, cooc_neighbors=cooc))
    if cooc:
        net.set_cooc(*cooc_neighbors(seqs.values(), item_count, 3, cooc))
    opt = paddle.optimizer.Adam(0.005, parameters=net.parameters(), lazy_mode=True)
    samples = TrainSamples(seqs, 20, batch, seed=1)
    sampler = LogUniformSampler(item_popularity(seqs, item_count), 1)
    net.train()
    times = _step_times(net, opt, sampler, samples.batches(warmup + steps), negs, np.random.default_rng(2), warmup)
    med = float(np.median(times))
    return {"data": data, "cooc_neighbors": cooc, "items": item_count - 1, "batch": batch, "neg_samples": negs,
            "steps": steps, "step_ms_p50": round(med * 1e3, 2), "samples_per_s": round(batch / med, 1)}


def _lat(fn, iters: int, warmup: int = 10) -> dict:
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    a = np.array(t) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def tower_modes(iters: int, batches: list[int]) -> dict:
    _quiet()
    import paddle

    from model.export import export_network
    from model.network import NetConfig, RecallNetwork
    from model.tower import UserTower

    paddle.set_device("cpu")
    paddle.seed(0)
    net = RecallNetwork(NetConfig(item_count=2001))
    net.eval()
    out_dir = Path(tempfile.mkdtemp()) / "export"
    export_network(net, np.ones(2001, dtype=np.int64), out_dir)
    engines = {
        "dygraph": None,
        "paddle_inference": UserTower.load(out_dir),
        "paddle_jit": UserTower.load(out_dir, engine="jit"),
    }
    try:
        engines["paddle_inference_onednn"] = UserTower.load(out_dir, mkldnn=True)
    except Exception as e:  # report, do not fail the benchmark
        engines["paddle_inference_onednn"] = None
        print(f"oneDNN unavailable: {e}", file=sys.stderr)
    rng = np.random.default_rng(0)
    result: dict = {}
    for b in batches:
        hist = rng.standard_normal((b, 20, 64)).astype(np.float32) * 0.1
        lengths = rng.integers(1, 21, size=b).astype(np.int64)
        row: dict = {}
        th, tl = paddle.to_tensor(hist), paddle.to_tensor(lengths)

        def dy(th=th, tl=tl) -> None:
            with paddle.no_grad():
                i, _ = net.tower(th, tl)
                i.numpy()

        row["dygraph"] = _lat(dy, iters)
        for name, tower in engines.items():
            if name == "dygraph" or tower is None:
                continue
            if name == "paddle_inference_onednn" and tower.engine_name != "paddle_inference_onednn":
                row[name] = {"error": f"fell back to {tower.engine_name}"}
                continue
            row[name] = _lat(lambda t=tower, h=hist, ln=lengths: t.encode(h, ln), iters)
        for r in row.values():
            if "p50_ms" in r:
                r["users_per_s"] = round(b / r["p50_ms"] * 1e3, 1)
                r["speedup_vs_dygraph_p50"] = round(row["dygraph"]["p50_ms"] / r["p50_ms"], 2)
        result[f"batch_{b}"] = row
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=367_982)  # AmazonBook: ids 1..367982
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--negs", type=int, default=1280)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--part", choices=("train-dense", "train-sparse", "train-sparse-cooc", "tower"))
    p.add_argument("--data", default="", help="with --part train-sparse[-cooc]: a dataset's train/ directory")
    a = p.parse_args()
    if a.part:
        if a.part == "tower":
            r = tower_modes(a.iters, [1, 32, 256])
        else:
            r = train_mode(a.part != "train-dense", a.items, a.steps, a.warmup, a.batch, a.negs,
                           20 if a.part == "train-sparse-cooc" else 0, a.data)
        print(json.dumps(r))
        return
    import paddle

    def part(name: str) -> dict:
        cmd = [sys.executable, __file__, "--part", name] + [
            f"--{k}={v}" for k, v in vars(a).items() if k != "part"
        ]
        env = {**os.environ, "GLOG_v": "0"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    dense, sparse, cooc = part("train-dense"), part("train-sparse"), part("train-sparse-cooc")
    tower = part("tower")
    print(json.dumps({
        "bench": "model_speed", "paddle": paddle.__version__, "device": "cpu",
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "train": {"dense": dense, "sparse": sparse,
                  "sparse_speedup_p50": round(dense["step_ms_p50"] / sparse["step_ms_p50"], 2),
                  "sparse_cooc": cooc, "cooc_slowdown_p50": round(cooc["step_ms_p50"] / sparse["step_ms_p50"], 2)},
        "user_tower": tower,
    }, indent=1))


if __name__ == "__main__":
    main()
