"""Model quality: Recall/NDCG/HitRate@50 of MIND, its options and the baselines on the same data,
same seed, same number of steps (synthetic planted multi-interest data by default).

    .venv/bin/python bench/model_quality.py [--users 20000 --items 5000 --epochs 2 --batches 600]
    .venv/bin/python bench/model_quality.py --data ../shared/data/amazonbook-demo --epochs 20 --batches 0
    .venv/bin/python bench/model_quality.py --data ~/.cache/mind-recall/data/Beauty --epochs 10 --batches 0 \
        --patience 2 --seed 1 --variants reference,reference+routing_per_sample,...   # scored on valid/

Prints one JSON object; each variant also reports its training time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The PaddleRec MIND (the defaults before issue 14).
REFERENCE = ["hyper_parameters.capsual_max_k=4", "hyper_parameters.bilinear=shared",
             "hyper_parameters.routing_per_sample=false", "hyper_parameters.bilinear_init=normal",
             "hyper_parameters.recency=false"]
VARIANTS: dict[str, list[str]] = {
    "mind": [],
    "mind+dynamic_k": ["hyper_parameters.dynamic_k=true"],
    "mind+bilinear=per_interest": ["hyper_parameters.bilinear=per_interest"],
    "mind+bilinear_init=normal": ["hyper_parameters.bilinear=per_interest", "hyper_parameters.bilinear_init=normal"],
    "mind+bilinear=shared": ["hyper_parameters.bilinear=shared"],
    "mind+k=4": ["hyper_parameters.capsual_max_k=4"],
    "mind+global_interest": ["hyper_parameters.global_interest=true"],
    "mind+capsual_iters=1": ["hyper_parameters.capsual_iters=1"],
    "mind+argmax": ["hyper_parameters.readout=argmax"],
    "mind+lr=0.0025": ["hyper_parameters.optimizer.learning_rate=0.0025"],
    "mind+relu_layer": ["hyper_parameters.relu_layer=true"],
    "mind+resample_routing": ["hyper_parameters.resample_routing=true"],
    "single_vector": ["hyper_parameters.model=single_vector", "hyper_parameters.recency=false"],
    "single_vector+recency": ["hyper_parameters.model=single_vector", "hyper_parameters.recency=true"],
    "mind+recency=false": ["hyper_parameters.recency=false"],
    "comirec_sa": ["hyper_parameters.model=comirec_sa"],
    "reference": REFERENCE,
    "reference+hard_neg_beta=10": [*REFERENCE, "hyper_parameters.hard_neg_beta=10"],
    "reference+hard_neg_beta=1": [*REFERENCE, "hyper_parameters.hard_neg_beta=1"],
    "reference+routing_reg=100": [*REFERENCE, "hyper_parameters.routing_reg=100"],
    "reference+routing_per_sample": [*REFERENCE, "hyper_parameters.routing_per_sample=true"],
    "reference+per_interest": [*REFERENCE, "hyper_parameters.bilinear=per_interest"],
    "reference+k=2": [*REFERENCE, "hyper_parameters.capsual_max_k=2"],
    "reference+argmax": [*REFERENCE, "hyper_parameters.readout=argmax"],
    "mind+hard_neg_beta=1": ["hyper_parameters.hard_neg_beta=1"],
    "mind+lr=0.01": ["hyper_parameters.optimizer.learning_rate=0.01"],
    "mind+batch1024": ["runner.train_batch_size=1024", "hyper_parameters.neg_samples=5000"],
}


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)
    from model.synth import write_dataset

    p = argparse.ArgumentParser()
    p.add_argument("--data", help="a directory with train/ and valid/ (default: generate synthetic data)")
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batches", type=int, default=600, help="batches per epoch (0: one pass)")
    p.add_argument("--neg-samples", type=int, default=1280)
    p.add_argument("--top-n", type=int, default=50)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--variants", default="mind,mind+dynamic_k,mind+relu_layer,mind+resample_routing,single_vector")
    p.add_argument("--patience", type=int, default=0, help="early stopping on DATA/valid Recall@50 (0: off)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every variant, e.g. -o hyper_parameters.cooc_neighbors=0 "
                        "(plain item vectors, as the tables before 2026-12-06 night were measured)")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="model_quality_"))
    if a.data:
        data = Path(a.data)
        source = str(data)
    else:
        data = work / "data"
        write_dataset(data, users=a.users, items=a.items, seed=a.seed)
        source = f"synth users={a.users} items={a.items} seed={a.seed}"
    try:
        results = _run(a, data, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints of a 368k-item table are ~280 MB each
    n = a.top_n
    print(json.dumps({
        "bench": "model_quality", "data": source, "epochs": a.epochs, "batches_per_epoch": a.batches,
        "neg_samples": a.neg_samples,
        "table": {k: {m: round(v[m], 4) for m in (f"recall@{n}", f"ndcg@{n}", f"hitrate@{n}")} | (
            {"train_s": v["train_s"]} if "train_s" in v else {}) for k, v in results.items()},
    }, indent=1))


def _run(a: argparse.Namespace, data: Path, work: Path) -> dict:
    from mind_recall.settings import load
    from model.infer import run_evaluate
    from model.trainer import train

    common = [
        f"runner.train_data_dir={data / 'train'}", f"runner.test_data_dir={data / 'valid'}",
        "runner.progress=false", f"runner.epochs={a.epochs}", f"runner.batches_per_epoch={a.batches}",
        f"runner.seed={a.seed}", f"hyper_parameters.neg_samples={a.neg_samples}", "runner.keep_checkpoints=1",
        f"runner.early_stop_patience={a.patience}", *a.override,
    ]
    results: dict = {}
    base = load(None, overrides=[*common, f"runner.model_save_path={work / 'none'}"], env={})
    with contextlib.redirect_stdout(io.StringIO()):  # run_evaluate prints each result
        results["most_popular"] = run_evaluate(base, a.top_n, baseline="most_popular")
    for name in a.variants.split(","):
        s = load(None, overrides=[*common, f"runner.model_save_path={work / name}", *VARIANTS[name]], env={})
        t0 = time.perf_counter()
        train(s)
        secs = time.perf_counter() - t0
        with contextlib.redirect_stdout(io.StringIO()):
            r = run_evaluate(s, a.top_n)
        r["train_s"] = round(secs, 1)
        r.pop("checkpoint", None)
        results[name] = r
    return results


if __name__ == "__main__":
    main()
