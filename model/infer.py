"""Offline evaluation of a checkpoint: ``python -m model.infer -m CFG -top_n 50`` (PaddleRec style)
and ``mind-recall evaluate``. Exact search over the item embedding (rows 1..) by default; the searcher is
injected (``SEARCHERS``): ``mind-recall evaluate --index milvus`` searches the serving store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mind_recall import logs
from mind_recall.settings import Settings, load

log = logging.getLogger(__name__)

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def make_encoder(net: Any) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """encode(hist ids [B, L], lengths [B]) for model.evaluation.evaluate. Ids outside the trained
    catalogue (eval items never seen in training) are dropped from a history, not mapped to padding
    in place, so the remaining history stays contiguous."""
    import paddle

    item_count = net.cfg.item_count

    def encode(hist: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist = np.asarray(hist, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        valid = (np.arange(hist.shape[1])[None, :] < lengths[:, None]) & (hist > 0) & (hist < item_count)
        if not valid[np.arange(hist.shape[1])[None, :] < lengths[:, None]].all():
            packed = np.zeros_like(hist)
            for i in range(hist.shape[0]):
                row = hist[i][valid[i]]
                packed[i, : row.size] = row
            hist, lengths = packed, valid.sum(axis=1).astype(np.int64)
        with paddle.no_grad():
            interests, n = net.encode_ids(paddle.to_tensor(hist), paddle.to_tensor(lengths))
        return interests.numpy(), n.numpy()

    return encode


SearcherFactory = Callable[[Settings, np.ndarray, np.ndarray], tuple[Search, Callable[[], None]]]


def exact_searcher(net: Any) -> Search:
    """Exact inner-product search over the network's item vectors (rows 1..)."""
    from model.evaluation import exact_search

    search: Search = exact_search(np.arange(1, net.cfg.item_count, dtype=np.int64), net.item_vectors())
    return search


def _exact(_settings: Settings, ids: np.ndarray, vectors: np.ndarray) -> tuple[Search, Callable[[], None]]:
    from model.evaluation import exact_search

    search: Search = exact_search(ids, vectors)
    return search, lambda: None


# Where evaluation searches, by ``--index`` name: (settings, item ids, item vectors) -> (search, cleanup).
# model/ is pure and below the serving layer, so it never imports a store: the command line (cli/main.py)
# plugs in ``milvus`` (worker/eval_index.py), and a test or a notebook can plug in any other.
SEARCHERS: dict[str, SearcherFactory] = {"exact": _exact}


def _rename(metrics: dict[str, Any], method: str) -> dict[str, Any]:
    return {"method": method, **metrics}


def evaluate_checkpoint(
    settings: Settings, top_n: int, *, epoch: int | None = None, index: str = "exact", exclude_seen: bool = False
) -> dict[str, Any]:
    """Metrics @top_n of the checkpoint (latest by default) on ``runner.test_data_dir``; with
    ``exclude_seen``, of what the worker serves by default (history items neither ranked nor counted)."""
    from model.data import read_eval
    from model.evaluation import evaluate
    from model.trainer import find_checkpoint, load_network, select_device

    select_device(settings.runner.use_gpu)
    ckpt = find_checkpoint(settings.runner.model_save_path, epoch)
    net, meta = load_network(ckpt)
    users = read_eval(settings.runner.test_data_dir)
    if index not in SEARCHERS:
        raise ValueError(f"--index {index!r} is not available here (known: {', '.join(sorted(SEARCHERS))}); "
                         "`mind-recall evaluate` plugs in milvus")
    ids = np.arange(1, net.cfg.item_count, dtype=np.int64)
    search, cleanup = SEARCHERS[index](settings, ids, net.item_vectors())
    try:
        metrics = evaluate(
            users, make_encoder(net), search, top_n=top_n, maxlen=net.cfg.maxlen,
            batch_size=settings.runner.infer_batch_size, exclude_seen=exclude_seen,
        )
    finally:
        cleanup()
    out = _rename(metrics, meta["model"])
    out["epoch"] = int(meta["epoch"])
    out["checkpoint"] = str(ckpt)
    out["index"] = index
    out["exclude_seen"] = exclude_seen
    return out


def evaluate_most_popular(settings: Settings, top_n: int) -> dict[str, Any]:
    """The most-popular baseline: every user gets the top_n most clicked training items."""
    from model.data import read_eval, read_train
    from model.evaluation import most_popular

    seqs = read_train(settings.runner.train_data_dir)
    users = read_eval(settings.runner.test_data_dir)
    max_id = max(int(s.max()) for s in seqs.values() if len(s))
    item_count = settings.hyper_parameters.item_count or max_id + 1
    metrics = most_popular(seqs, item_count, top_n, users)
    return _rename(metrics, "most_popular")


def run_evaluate(
    settings: Settings, top_n: int, *, epoch: int | None = None, baseline: str = "none",
    index: str = "exact", json_out: str | None = None, exclude_seen: bool = False,
) -> dict[str, Any]:
    if top_n <= 0:
        raise ValueError(f"top_n must be positive, got {top_n}")
    if baseline == "most_popular":
        result = evaluate_most_popular(settings, top_n)
    elif baseline == "none":
        result = evaluate_checkpoint(settings, top_n, epoch=epoch, index=index, exclude_seen=exclude_seen)
    else:
        raise ValueError(f"--baseline: expected most_popular|none, got {baseline!r}")
    text = json.dumps(result, indent=1)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-n", "-top_n", dest="top_n", type=int, default=50, help="N of Recall/NDCG/HitRate@N")
    p.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: the latest)")
    p.add_argument("--baseline", choices=("none", "most_popular"), default="none")
    p.add_argument("--index", choices=sorted(SEARCHERS), default="exact",
                   help="where to search the item vectors (milvus: the serving store, via `mind-recall evaluate`)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="score what the worker serves by default: history items are neither ranked nor counted")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="also write the JSON result here")


def main(argv: Sequence[str] | None = None) -> int:

    p = argparse.ArgumentParser(prog="python -m model.infer", description="evaluate a MIND checkpoint")
    p.add_argument("-m", "--config", metavar="FILE")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    add_eval_args(p)
    args = p.parse_args(argv)
    logs.setup()
    settings = load(args.config, overrides=args.override)
    try:
        run_evaluate(
            settings, args.top_n, epoch=args.epoch, baseline=args.baseline, index=args.index,
            json_out=args.json_out, exclude_seen=args.exclude_seen,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"model.infer: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
