"""Model quality per ARCHITECTURE section 8: MIND vs a single-vector model vs most-popular, same data,
same seeds, same training budget, Recall/NDCG/HitRate@50 with merge as in production (seen items kept).

    .venv/bin/python bench/quality.py --dataset Beauty     # a real dataset (see below)
    .venv/bin/python bench/quality.py                      # both synthetic/demo parts, a few minutes
    .venv/bin/python bench/quality.py --part synth --synth-batches 1500
    .venv/bin/python bench/quality.py --part amazon --seeds 1,2,3 --amazon-epochs 20

``--dataset NAME``: ``DATA_ROOT/NAME`` written by ``mind-recall data fetch`` (train/, valid/, test/;
split by user, ComiRec). Every model (``--models``, default mind, comirec_sa, single_vector) trains on
train/ with early stopping on valid/ Recall@50 (``--max-epochs``, ``--patience``), then the best epoch
is scored on test/ at 20 and 50; most-popular is scored on test/ too. ``--seeds`` training seeds,
mean and std. ``--ablation`` adds MIND with each training option switched (one at a time).
``--lr-grid 0.005,0.001`` trains every model and seed at each learning rate and keeps, per model and
seed, the run with the best *valid* Recall@50 (test is never looked at to choose): a baseline left at
the learning rate MIND was tuned for is an unfair baseline (docs/benchmarks.md, "The single vector's
learning rate").
``--jobs 2`` trains two runs side by side (one process each; same numbers, about half the wall time
on 2 cores with OMP_NUM_THREADS=1).

(a) ``amazon``: the AmazonBook demo sample (../shared/data/amazonbook-demo), 3 seeds, mean and std,
    plus diagnostics that explain the numbers (how many eval items were ever seen in training,
    popularity concentration);
(b) ``synth``: model/synth.py data with planted multi-interest structure; MIND/single-vector and
    MIND/most-popular ratios (goal >= 1.2x and >= 3x).

Prints one JSON object (config included); never asserts.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AMAZON = ROOT.parent / "shared" / "data" / "amazonbook-demo"
METRICS = ("recall", "ndcg", "hitrate")


def _train_eval(data: Path, work: Path, model: str, seed: int, overrides: list[str], top_n: int) -> dict:
    from mind_recall.settings import load
    from model.infer import evaluate_checkpoint
    from model.trainer import train

    s = load(None, overrides=[
        f"runner.train_data_dir={data / 'train'}", f"runner.test_data_dir={data / 'valid'}",
        f"runner.model_save_path={work / f'{model}_{seed}'}", f"runner.seed={seed}",
        "runner.progress=false", *MODELS.get(model, [f"hyper_parameters.model={model}"]), *overrides,
    ])
    t0 = time.perf_counter()
    train(s)
    train_s = time.perf_counter() - t0
    r = evaluate_checkpoint(s, top_n)
    out = {m: r[f"{m}@{top_n}"] for m in METRICS}
    out["train_s"] = round(train_s, 1)
    out["avg_interests"] = r.get("avg_interests")
    return out


def _most_popular(data: Path, top_n: int) -> dict:
    from model.data import read_eval, read_train
    from model.evaluation import most_popular

    seqs, users = read_train(data / "train"), read_eval(data / "valid")
    item_count = 1 + max(int(s.max()) for s in seqs.values())
    r = most_popular(seqs, item_count, top_n, users)
    return {m: r[f"{m}@{top_n}"] for m in METRICS}


def _agg(runs: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for m in (*METRICS, "train_s"):
        vals = [r[m] for r in runs]
        out[m] = {"mean": round(statistics.fmean(vals), 5),
                  "std": round(statistics.stdev(vals), 5) if len(vals) > 1 else 0.0,
                  "runs": [round(v, 5) for v in vals]}
    return out


def diagnostics(data: Path, top_n: int) -> dict:
    """Why a model can or cannot beat popularity on this data."""
    import numpy as np

    from model.data import read_eval, read_train
    from model.evaluation import popular_items

    seqs, users = read_train(data / "train"), read_eval(data / "valid")
    clicks = np.concatenate(list(seqs.values()))
    ids, cnt = np.unique(clicks, return_counts=True)
    counts = dict(zip(ids.tolist(), cnt.tolist(), strict=True))
    ev = np.concatenate([u.eval_items for u in users])
    hist = np.concatenate([u.hist for u in users])
    seen_ev = np.array([i in counts for i in ev.tolist()])
    item_count = 1 + int(ids.max())
    pop = set(popular_items(seqs, item_count, top_n).tolist())
    top1 = np.sort(cnt)[::-1][: max(1, len(cnt) // 100)]
    lens = np.array([len(s) for s in seqs.values()])
    return {
        "train_users": len(seqs), "train_clicks": int(clicks.size), "distinct_items": int(ids.size),
        "max_item_id": int(ids.max()), "eval_users": len(users), "eval_items": int(ev.size),
        "median_train_len": float(np.median(lens)),
        "users_usable_for_training (len>4)": int((lens > 4).sum()),
        "eval_items_seen_in_train": round(float(seen_ev.mean()), 4),
        "eval_items_seen_5plus_times": round(float(np.mean([counts.get(i, 0) >= 5 for i in ev.tolist()])), 4),
        "hist_items_seen_in_train": round(float(np.mean([i in counts for i in hist.tolist()])), 4),
        "users_with_a_seen_eval_item (hitrate upper bound)": round(
            float(np.mean([any(i in counts for i in u.eval_items.tolist()) for u in users])), 4),
        "users_without_a_seen_hist_item": int(sum(not any(i in counts for i in u.hist.tolist()) for u in users)),
        "eval_items_in_top50_popular": round(float(np.mean([i in pop for i in ev.tolist()])), 4),
        "clicks_on_top1pct_items": round(float(top1.sum() / cnt.sum()), 4),
        "items_clicked_once": round(float(np.mean(cnt == 1)), 4),
    }


def run_amazon(args: argparse.Namespace, work: Path) -> dict:
    data = Path(args.amazon_dir)
    if not (data / "train").is_dir():
        return {"skipped": f"{data} not found"}
    overrides = [f"runner.epochs={args.amazon_epochs}", f"runner.batches_per_epoch={args.amazon_batches}",
                 *args.override]
    seeds = [int(s) for s in args.seeds.split(",")]
    res: dict[str, Any] = {"data": str(data), "seeds": seeds, "overrides": overrides}
    for model in ("mind", "single_vector"):
        runs = [_train_eval(data, work / "amazon", model, s, overrides, args.top_n) for s in seeds]
        res[model] = _agg(runs)
    res["most_popular"] = _most_popular(data, args.top_n)
    res["diagnostics"] = diagnostics(data, args.top_n)
    return res


# The baselines as issue 14 names them: the single vector is plain mean pooling (YouTube DNN) over plain
# item vectors, so its recency weights and co-occurrence vectors are off; single_vector+recency and
# single_vector+cooc are the same tower with one of them, for comparison (+cooc: the very item
# vectors MIND gets by default, so it separates the pooling from the item representation).
MODELS: dict[str, list[str]] = {
    "single_vector": ["hyper_parameters.model=single_vector", "hyper_parameters.recency=false",
                      "hyper_parameters.cooc_neighbors=0"],
    "single_vector+recency": ["hyper_parameters.model=single_vector", "hyper_parameters.recency=true",
                              "hyper_parameters.cooc_neighbors=0"],
    # No cooc override: it inherits the config's (and any -o) co-occurrence settings, as MIND does.
    "single_vector+cooc": ["hyper_parameters.model=single_vector", "hyper_parameters.recency=false"],
}


# Each training option of issue 14, switched against the default config (one at a time).
ABLATION: dict[str, list[str]] = {
    "recency=false": ["hyper_parameters.recency=false"],
    "cooc_neighbors=0": ["hyper_parameters.cooc_neighbors=0"],
    "bilinear=per_interest": ["hyper_parameters.bilinear=per_interest"],
    "bilinear=per_interest,bilinear_init=normal": ["hyper_parameters.bilinear=per_interest",
                                                   "hyper_parameters.bilinear_init=normal"],
    "routing_per_sample=false": ["hyper_parameters.routing_per_sample=false"],
    "bilinear=shared": ["hyper_parameters.bilinear=shared"],
    "capsual_max_k=4": ["hyper_parameters.capsual_max_k=4"],
    "hard_neg_beta=1": ["hyper_parameters.hard_neg_beta=1"],
    "routing_reg=100": ["hyper_parameters.routing_reg=100"],
    "batch=1024,neg=5000": ["runner.train_batch_size=1024", "hyper_parameters.neg_samples=5000"],
}


def _train_test(data: Path, work: Path, name: str, seed: int, overrides: list[str]) -> dict:
    """Train on train/ (early stopping on valid/), score the kept checkpoint on test/ @20 and @50."""
    import shutil

    from mind_recall.settings import load
    from model.infer import evaluate_checkpoint
    from model.trainer import read_meta, train

    save = work / f"{name.replace('/', '_')}_{seed}"
    s = load(None, overrides=[
        f"runner.train_data_dir={data / 'train'}", f"runner.valid_data_dir={data / 'valid'}",
        f"runner.test_data_dir={data / 'test'}", f"runner.model_save_path={save}", f"runner.seed={seed}",
        "runner.progress=false", "runner.keep_checkpoints=1", *overrides,
    ], env={})
    t0 = time.perf_counter()
    last = train(s)
    out: dict[str, Any] = {"train_s": round(time.perf_counter() - t0, 1)}
    meta = read_meta(last)
    out["epoch"] = int(meta["epoch"])
    out["valid_recall@50"] = meta.get("valid_recall@50")
    for n in (20, 50):
        r = evaluate_checkpoint(s, n)
        out.update({f"{m}@{n}": r[f"{m}@{n}"] for m in METRICS})
        out["users"] = r["users"]
        if n == 50:  # where Recall@50 comes from: history length, re-views vs new (model.evaluation.breakdown)
            out.update({k: v for k, v in r.items() if "_hist_" in k or k.startswith(("repeat_", "new_"))})
    # As the worker serves by default (worker.exclude_seen): new items only, history items not ranked.
    r = evaluate_checkpoint(s, 50, exclude_seen=True)
    out.update({f"served_{m}@50": r[f"{m}@50"] for m in METRICS})
    out["served_users"] = r["users"]
    shutil.rmtree(save, ignore_errors=True)
    return out


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)


def _run_jobs(
    data: Path, work: Path, jobs: list[tuple[str, int, list[str]]], n: int
) -> Iterator[tuple[str, int, dict]]:
    """Train and score each (variant, seed): in this process, or in ``n`` spawned processes (one
    training thread each with OMP_NUM_THREADS=1). Every run is deterministic for its seed, so running
    them side by side changes the wall time only, never the numbers."""
    if n <= 1:
        for name, seed, overrides in jobs:
            yield name, seed, _train_test(data, work, name, seed, overrides)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")  # Paddle is not fork-safe
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_quiet) as pool:
        futures = {pool.submit(_train_test, data, work, name, seed, overrides): (name, seed)
                   for name, seed, overrides in jobs}
        for f in as_completed(futures):
            yield (*futures[f], f.result())


def pick_by_valid(runs: dict[float, dict]) -> tuple[float, dict]:
    """The (learning rate, run) with the best valid Recall@50 among one model's runs for one seed (ties:
    the larger rate). Only valid numbers are compared, so the choice never sees test; a run without a
    valid score cannot be chosen."""
    scored = [(lr, r) for lr, r in runs.items() if isinstance(r.get("valid_recall@50"), (int, float))]
    if not scored:
        raise ValueError(f"no run has a valid_recall@50 to choose by (learning rates {sorted(runs)})")
    return max(scored, key=lambda lr_r: (lr_r[1]["valid_recall@50"], lr_r[0]))


def _lr_grid(text: str) -> list[float]:
    """``--lr-grid``: distinct positive learning rates, e.g. ``0.005,0.001``."""
    try:
        rates = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not rates or any(not r > 0 for r in rates) or len(set(rates)) != len(rates):
        raise argparse.ArgumentTypeError(f"expected distinct positive learning rates, got {text!r}")
    return rates


def _agg_keys(runs: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if len(vals) != len(runs):
            continue
        out[key] = {"mean": round(statistics.fmean(vals), 5),
                    "std": round(statistics.stdev(vals), 5) if len(vals) > 1 else 0.0,
                    "runs": [round(v, 5) for v in vals]}
    return out


def run_dataset(args: argparse.Namespace, work: Path) -> dict:
    from model.data import read_eval, read_train
    from model.evaluation import most_popular

    data = Path(args.data_root) / args.dataset
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise SystemExit(f"{data}: not found; convert it first: mind-recall data fetch {args.dataset} --src ... "
                         f"--out {data}")
    base = [f"runner.epochs={args.max_epochs}", f"runner.early_stop_patience={args.patience}", *args.override]
    seeds = [int(x) for x in args.seeds.split(",")]
    meta_file = data / "meta.json"
    res: dict[str, Any] = {"data": str(data), "seeds": seeds, "overrides": base,
                           "meta": json.loads(meta_file.read_text()) if meta_file.exists() else None}
    seqs, test = read_train(data / "train"), read_eval(data / "test")
    item_count = 1 + max(int(s.max()) for s in seqs.values())
    res["most_popular"] = {}
    for n in (20, 50):
        r = most_popular(seqs, item_count, n, test)
        res["most_popular"].update({f"{m}@{n}": r[f"{m}@{n}"] for m in METRICS})
    variants: dict[str, list[str]] = {m: MODELS.get(m, [f"hyper_parameters.model={m}"])
                                      for m in args.models.split(",") if m}
    if args.ablation:
        for name, extra in ABLATION.items():
            variants[f"mind {name}"] = ["hyper_parameters.model=mind", *extra]
    grid: list[float] = args.lr_grid

    def run_name(name: str, lr: float | None) -> str:
        return name if lr is None else f"{name}@lr={lr:g}"

    jobs = [(run_name(name, lr), seed,
             [*base, *extra, *([] if lr is None else [f"hyper_parameters.optimizer.learning_rate={lr}"])])
            for name, extra in variants.items() for seed in seeds for lr in (grid or (None,))]
    done: dict[tuple[str, int], dict] = {}
    for name, seed, out in _run_jobs(data, work, jobs, args.jobs):
        done[(name, seed)] = out
        print(json.dumps({"dataset": args.dataset, "variant": name, "seed": seed, **out}), file=sys.stderr, flush=True)
    for name in variants:
        if not grid:
            res[name] = _agg_keys([done[(name, seed)] for seed in seeds])
            continue
        chosen = [pick_by_valid({lr: done[(run_name(name, lr), seed)] for lr in grid}) for seed in seeds]
        res[name] = _agg_keys([{**run, "learning_rate": lr} for lr, run in chosen])
        res[name]["by_learning_rate"] = {
            f"{lr:g}": _agg_keys([done[(run_name(name, lr), seed)] for seed in seeds]) for lr in grid}
    mp = res["most_popular"]["recall@50"]
    ratios: dict[str, Any] = {}
    if "mind" in res:
        mind = res["mind"]["recall@50"]["mean"]
        for other in ("single_vector", "comirec_sa"):
            if other in res:
                ratios[f"mind/{other}"] = round(mind / res[other]["recall@50"]["mean"], 3)
                ratios[f"served: mind/{other}"] = round(
                    res["mind"]["served_recall@50"]["mean"] / res[other]["served_recall@50"]["mean"], 3)
        ratios["mind/most_popular"] = round(mind / mp, 3) if mp else None
    res["ratios_recall@50"] = ratios
    res["markdown"] = markdown_table(res)
    return res


def markdown_table(res: dict) -> str:
    """The docs/benchmarks.md table: mean ± std over the seeds, test users."""
    cols = [f"{m}@{n}" for n in (20, 50) for m in ("recall", "ndcg", "hitrate")]
    head = "| method | " + " | ".join(c.replace("hitrate", "HR").replace("recall", "R").replace("ndcg", "NDCG")
                                     for c in cols) + " | epochs | train s |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    models = {name: r for name, r in res.items()
              if name not in ("data", "seeds", "overrides", "meta", "ratios_recall@50", "markdown", "most_popular")}
    for name, r in models.items():
        cells = [f"{r[c]['mean']:.4f} ± {r[c]['std']:.4f}" for c in cols]
        tail = f" | {r['epoch']['mean'] + 1:.1f} | {r['train_s']['mean']:.0f} |"
        if "learning_rate" in r:  # --lr-grid: the rate chosen on valid, per seed
            name = f"{name} (lr {', '.join(f'{v:g}' for v in r['learning_rate']['runs'])})"
        lines.append(f"| {name} | " + " | ".join(cells) + tail)
    mp = res["most_popular"]
    lines.append("| most_popular | " + " | ".join(f"{mp[c]:.4f}" for c in cols) + " | - | - |")
    # Where the Recall@50 comes from (test users): by history length, then re-views vs new items (a column
    # is left out where it is empty, e.g. no re-views on Beauty).
    first: dict[str, Any] = next(iter(models.values()), {})
    names = {"repeat_recall@50": "re-viewed items", "new_recall@50": "new items"}
    extra = [k for k in first if k.startswith("recall@50_hist_") or k in names]
    rows = [(name, r) for name, r in models.items() if all(c in r for c in extra)]
    if extra and rows:
        def title(c: str) -> str:
            if c in names:
                return names[c]
            users = first.get(c.replace("recall@50_hist", "users_hist"), {}).get("mean")
            return f"history {c.rsplit('_', 1)[-1]}" + (f" ({users:.0f} users)" if users is not None else "")
        lines += ["", "| Recall@50 of | " + " | ".join(title(c) for c in extra) + " |", "|" + "---|" * (len(extra) + 1)]
        lines += [f"| {name} | " + " | ".join(f"{r[c]['mean']:.4f}" for c in extra) + " |" for name, r in rows]
    return "\n".join(lines)


def run_synth(args: argparse.Namespace, work: Path) -> dict:
    from model.synth import write_dataset

    data = work / "synth_data"
    t0 = time.perf_counter()
    # Big topics (200 items) with flat-ish popularity and 3-4 interests per user: the regime where a
    # single vector must trade one interest's head items for another's (tuned once, see docs).
    params: dict[str, Any] = {"clusters": args.synth_clusters, "zipf": 0.6, "min_interests": 3,
                              "cluster_zipf": 0.3}
    for kv in args.synth_param:
        key, _, val = kv.partition("=")
        params[key] = float(val) if "." in val else int(val)
    ds = write_dataset(data, args.synth_users, args.synth_items, args.synth_seed, **params)
    gen_s = time.perf_counter() - t0
    overrides = [
        f"runner.epochs={args.synth_epochs}", f"runner.batches_per_epoch={args.synth_batches}",
        f"hyper_parameters.embedding_dim={args.synth_dim}", f"hyper_parameters.hidden_size={args.synth_dim}",
        *args.override,
    ]
    meta = {k: v for k, v in ds.meta.items() if k != "params"}
    res: dict[str, Any] = {"data": meta, "params": ds.meta["params"], "generate_s": round(gen_s, 2),
                           "overrides": overrides}
    seeds = [int(s) for s in args.synth_train_seeds.split(",")]
    for model in ("mind", "single_vector"):
        res[model] = _agg([_train_eval(data, work / "synth", model, s, overrides, args.top_n) for s in seeds])
    res["most_popular"] = _most_popular(data, args.top_n)
    mind, single, mp = (res["mind"]["recall"]["mean"], res["single_vector"]["recall"]["mean"],
                        res["most_popular"]["recall"])
    res["ratios_recall"] = {
        "mind/single_vector": round(mind / single, 3) if single else None,
        "mind/most_popular": round(mind / mp, 3) if mp else None,
        "goal": "mind/single_vector >= 1.2 and mind/most_popular >= 3",
    }
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "amazon", "synth"), default="all")
    p.add_argument("--top-n", type=int, default=50)
    p.add_argument("--amazon-dir", default=str(AMAZON))
    p.add_argument("--seeds", default="1,2,3", help="training seeds for the AmazonBook part")
    p.add_argument("--amazon-epochs", type=int, default=5)
    p.add_argument("--amazon-batches", type=int, default=0, help="batches per epoch (0: one pass)")
    p.add_argument("--synth-users", type=int, default=10000)
    p.add_argument("--synth-items", type=int, default=5000)
    p.add_argument("--synth-clusters", type=int, default=25)
    p.add_argument("--synth-seed", type=int, default=1)
    p.add_argument("--synth-dim", type=int, default=64)
    p.add_argument("--synth-epochs", type=int, default=1)
    p.add_argument("--synth-batches", type=int, default=2000)
    p.add_argument("--synth-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a model.synth.SynthParams field, e.g. zipf=0.6 (repeatable)")
    p.add_argument("--synth-train-seeds", default="1,2", help="training seeds for the synthetic part")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--dataset", help="a real dataset under --data-root (converted by mind-recall data fetch)")
    p.add_argument("--data-root", default=str(Path.home() / ".cache" / "mind-recall" / "data"))
    p.add_argument("--models", default="mind,comirec_sa,single_vector")
    p.add_argument("--jobs", type=int, default=1, help="--dataset runs trained side by side (one process each)")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=2,
                   help="epochs without a better valid Recall@50 before stopping (the per-dataset tables use 2)")
    p.add_argument("--lr-grid", type=_lr_grid, default=[],
                   help="comma-separated learning rates: each model and seed keeps its best on valid")
    p.add_argument("--ablation", action="store_true", help="also MIND with each training option switched")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every trained model")
    args = p.parse_args()

    _quiet()
    t0 = time.perf_counter()
    result: dict[str, Any] = {"bench": "quality", "config": vars(args)}
    with tempfile.TemporaryDirectory(prefix="mind-quality-") as tmp:
        if args.dataset:
            result[args.dataset] = run_dataset(args, Path(tmp))
        elif args.part in ("all", "amazon"):
            result["amazon"] = run_amazon(args, Path(tmp))
        if not args.dataset and args.part in ("all", "synth"):
            result["synth"] = run_synth(args, Path(tmp))
    result["total_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.dataset:
        print(result[args.dataset]["markdown"], file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
