"""Train MIND (or the single-vector baseline): ``python -m model.trainer -m CFG [-o k=v ...]``.

Deterministic for ``runner.seed``: ``paddle.seed`` fixes the initial weights and numpy Generators
(created once) drive the samples, the negatives and the resampled routing logits. A checkpoint per
epoch goes to ``runner.model_save_path/<epoch>/`` (``model.pdparams``, ``model.pdopt``,
``popularity.npy`` and ``meta.json``, written last, so a directory without it is ignored);
``runner.resume=true`` (or ``--resume``) continues after the latest one, generator states included,
so a resumed run reproduces an uninterrupted one. ``runner.keep_checkpoints=N`` keeps only the last N
(a 368k-item table with its Adam moments is ~280 MB per checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mind_recall import logs
from mind_recall.settings import Settings, load

log = logging.getLogger(__name__)

META = "meta.json"
PARAMS = "model.pdparams"
OPT = "model.pdopt"
POPULARITY = "popularity.npy"
FORMAT = 1


def select_device(use_gpu: bool) -> str:
    """``gpu`` when asked for and Paddle has CUDA, else ``cpu`` (one log line says which and why)."""
    import paddle

    if use_gpu and paddle.is_compiled_with_cuda():
        paddle.set_device("gpu")
        log.info("device: GPU (%s)", paddle.device.get_device())
        return "gpu"
    paddle.set_device("cpu")
    if use_gpu:
        log.info("device: CPU (runner.use_gpu is set but this Paddle build has no CUDA)")
    else:
        log.info("device: CPU (runner.use_gpu=false)")
    return "cpu"


def checkpoints(save_path: str | Path) -> list[Path]:
    """Complete checkpoint directories under ``save_path``, by epoch."""
    root = Path(save_path)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / META).exists()]
    return sorted(found, key=lambda p: int(p.name))


def find_checkpoint(save_path: str | Path, epoch: int | None = None) -> Path:
    """The checkpoint of ``epoch`` (default: the latest); FileNotFoundError with the path if none."""
    found = checkpoints(save_path)
    if epoch is None:
        if not found:
            raise FileNotFoundError(f"no checkpoint under {save_path} (train first: mind-recall train)")
        return found[-1]
    for p in found:
        if int(p.name) == epoch:
            return p
    have = ", ".join(p.name for p in found) or "none"
    raise FileNotFoundError(f"no checkpoint for epoch {epoch} under {save_path} (have: {have})")


def read_meta(ckpt: str | Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((Path(ckpt) / META).read_text(encoding="utf-8"))
    return meta


def load_network(ckpt: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the network recorded in a checkpoint (model type and shapes from meta.json), in eval mode."""
    import paddle

    from model.network import RecallNetwork

    meta = read_meta(ckpt)
    cfg = _checkpoint_net(meta)
    net = RecallNetwork(cfg, routing_seed=int(meta.get("routing_seed", 0)))
    net.set_state_dict(paddle.load(str(Path(ckpt) / PARAMS)))
    net.eval()
    return net, meta


def load_popularity(ckpt: str | Path) -> np.ndarray:
    return np.load(Path(ckpt) / POPULARITY)


def make_optimizer(settings: Settings, parameters: Any) -> Any:
    import paddle

    opt = settings.hyper_parameters.optimizer
    lr = opt.learning_rate
    sparse = settings.hyper_parameters.sparse_embedding
    if opt.class_ == "Adam":
        # lazy_mode: with a sparse gradient only the rows in the batch get Adam updates (13x faster
        # per step on a 368k-item table; docs/model.md).
        return paddle.optimizer.Adam(lr, parameters=parameters, lazy_mode=sparse)
    if opt.class_ == "AdamW":
        if sparse:
            raise ValueError("AdamW takes no sparse gradients: set hyper_parameters.sparse_embedding=false")
        return paddle.optimizer.AdamW(lr, parameters=parameters)
    if opt.class_ == "Adagrad":
        return paddle.optimizer.Adagrad(lr, parameters=parameters)
    return paddle.optimizer.SGD(lr, parameters=parameters)


def _json_state(state: dict) -> dict:
    return json.loads(json.dumps(state))  # numpy bit-generator states are plain ints and strings


def _save_checkpoint(
    root: Path, epoch: int, net: Any, opt: Any, popularity: np.ndarray, meta: dict[str, Any]
) -> Path:
    import paddle

    final = root / str(epoch)
    tmp = root / f".{epoch}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    paddle.save(net.state_dict(), str(tmp / PARAMS))
    paddle.save(opt.state_dict(), str(tmp / OPT))
    np.save(tmp / POPULARITY, popularity)
    (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def train(settings: Settings, *, resume: bool | None = None) -> Path:
    """Train per ``settings`` and return the last checkpoint directory."""
    import paddle

    # Optimizer state is keyed by generated variable names (embedding_0.w_0_moment1_0); a fresh
    # name scope makes them the same in every run, so a checkpoint resumes in any process.
    with paddle.utils.unique_name.guard():
        return _train(settings, resume)


def _train(settings: Settings, resume: bool | None) -> Path:
    import paddle
    from tqdm import tqdm

    from model.data import TrainSamples, item_popularity, read_train
    from model.network import NetConfig, RecallNetwork
    from model.sampler import LogUniformSampler

    r, hp = settings.runner, settings.hyper_parameters
    resume = r.resume if resume is None else resume
    select_device(r.use_gpu)

    seqs = read_train(r.train_data_dir)
    if not seqs:
        raise ValueError(f"{r.train_data_dir}: no training rows")
    max_id = int(max(int(s.max()) for s in seqs.values() if len(s)))
    item_count = hp.item_count or max_id + 1
    if max_id >= item_count:
        raise ValueError(f"hyper_parameters.item_count={item_count} but the data has item id {max_id}")
    popularity = item_popularity(seqs, item_count)
    cfg = NetConfig.from_settings(hp, item_count)
    cfg.validate()

    paddle.seed(r.seed)
    net = RecallNetwork(cfg, routing_seed=r.seed)
    if cfg.cooc_neighbors:
        from model.cooc import cooc_neighbors

        ids, weights = cooc_neighbors(seqs.values(), item_count, hp.cooc_window, cfg.cooc_neighbors)
        net.set_cooc(ids, weights)
        log.info("co-occurrence item vectors: window %d, up to %d neighbours, %d items have some",
                 hp.cooc_window, cfg.cooc_neighbors, int((weights[:, 1] > 0).sum()))
    opt = make_optimizer(settings, net.parameters())
    samples = TrainSamples(seqs, hp.maxlen, r.train_batch_size, seed=r.seed)
    # Independent streams from the one seed: negatives and routing resampling.
    sampler = LogUniformSampler(popularity, np.random.default_rng([r.seed, 1]))
    routing_rng = np.random.default_rng([r.seed, 2])
    n_batches = r.batches_per_epoch or samples.batches_per_epoch()
    n_neg = min(hp.neg_samples, sampler.n_items)

    root = Path(r.model_save_path)
    start = 0
    last: Path | None = None
    valid_users = _valid_users(settings) if r.early_stop_patience else None
    best: tuple[float, int] = (-1.0, -1)  # (valid Recall@50, epoch)
    if resume and checkpoints(root):
        last = checkpoints(root)[-1]
        meta = read_meta(last)
        if _net_dict(_checkpoint_net(meta)) != _net_dict(cfg):
            raise ValueError(f"cannot resume from {last}: trained with {meta['net']}, now {_net_dict(cfg)}")
        net.set_state_dict(paddle.load(str(last / PARAMS)))
        opt.set_state_dict(paddle.load(str(last / OPT)))
        samples.set_state(meta["rng"]["samples"])
        sampler.set_state(meta["rng"]["sampler"])
        routing_rng.bit_generator.state = meta["rng"]["routing"]
        start = int(meta["epoch"]) + 1
        if "best" in meta:
            best = (float(meta["best"]["recall@50"]), int(meta["best"]["epoch"]))
        log.info("resuming after epoch %d from %s", start - 1, last)
        if start >= r.epochs:
            log.info("already trained %d epoch(s) (runner.epochs=%d): nothing to do", start, r.epochs)
            return last
    log.info(
        "training %s: %d users, %d items, %d samples/epoch, %d batches of %d, %d epochs, %s negatives",
        cfg.model, len(seqs), item_count - 1, samples.samples_per_epoch, n_batches, r.train_batch_size,
        r.epochs, "all items" if sampler.full(n_neg) else n_neg,
    )

    net.train()
    step = 0
    for epoch in range(start, r.epochs):
        t0 = time.perf_counter()
        losses: list[float] = []
        bar = tqdm(
            total=n_batches, desc=f"epoch {epoch}", disable=not r.progress, leave=False, file=sys.stderr
        )
        for i, batch in enumerate(samples.batches(n_batches)):
            resample = cfg.resample_routing or cfg.routing_per_sample
            loss = train_step(net, opt, sampler, batch, n_neg, routing_rng if resample else None)
            losses.append(loss)
            step += 1
            rate = (i + 1) * r.train_batch_size / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.0f}", refresh=False)
            if not r.progress and (i + 1) % r.print_interval == 0:
                log.info("epoch %d batch %d/%d loss %.4f %.0f samples/s", epoch, i + 1, n_batches, loss, rate)
        bar.close()
        elapsed = time.perf_counter() - t0
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        valid_recall = None
        if valid_users is not None:
            valid_recall = valid_recall_at_50(net, valid_users, r.infer_batch_size)
            net.train()
            if valid_recall > best[0]:
                best = (valid_recall, epoch)
        meta = {
            "format": FORMAT, "model": cfg.model, "epoch": epoch, "net": _net_dict(cfg),
            "item_count": item_count, "dim": cfg.embedding_dim, "k": cfg.k, "maxlen": cfg.maxlen,
            "routing_seed": r.seed, "loss": mean_loss, "batches": n_batches,
            "samples_per_s": n_batches * r.train_batch_size / max(elapsed, 1e-9),
            "config": settings.to_dict(mask_secrets=True)["hyper_parameters"],
            "runner": {k: v for k, v in settings.to_dict()["runner"].items()},
            "rng": {
                "samples": _json_state(samples.state()), "sampler": _json_state(sampler.state()),
                "routing": _json_state(dict(routing_rng.bit_generator.state)),
            },
            "created_ts": int(time.time() * 1000),
        }
        if valid_recall is not None:
            meta["valid_recall@50"] = valid_recall
            meta["best"] = {"epoch": best[1], "recall@50": best[0]}
        last = _save_checkpoint(root, epoch, net, opt, popularity, meta)
        if r.keep_checkpoints:
            for old in checkpoints(root)[: -r.keep_checkpoints]:
                if int(old.name) != best[1]:  # early stopping keeps the best epoch too
                    shutil.rmtree(old, ignore_errors=True)
        log.info("epoch %d: loss %.4f, %.0f samples/s, %ssaved %s", epoch, mean_loss, meta["samples_per_s"],
                 "" if valid_recall is None else f"valid Recall@50 {valid_recall:.4f} (best {best[0]:.4f} "
                 f"at epoch {best[1]}), ", last)
        if cfg.cooc_learned and cfg.cooc_neighbors:
            log.info("co-occurrence rank weights (neighbour 1..%d): %s", cfg.cooc_neighbors,
                     " ".join(f"{v:.2f}" for v in net.cooc_rank_w.numpy()))
        if valid_recall is not None and epoch - best[1] >= r.early_stop_patience:
            log.info("early stop: no better valid Recall@50 for %d epoch(s)", epoch - best[1])
            break
    net.eval()
    if valid_users is not None and best[1] >= 0:
        # The best epoch becomes the latest checkpoint (what evaluate/export load by default).
        for later in checkpoints(root):
            if int(later.name) > best[1]:
                shutil.rmtree(later, ignore_errors=True)
        last = root / str(best[1])
        log.info("early stopping: best valid Recall@50 %.4f at epoch %d (%s)", best[0], best[1], last)
    assert last is not None
    return last


def _valid_users(settings: Settings) -> Any:
    from model.data import read_eval

    path = settings.runner.valid_data_dir or settings.runner.test_data_dir
    users = read_eval(path)
    if not users:
        raise ValueError(f"{path}: no validation users for early stopping")
    return users


def valid_recall_at_50(net: Any, users: Any, batch_size: int) -> float:
    """Recall@50 of the live network on validation users (exact search, as ``evaluate``)."""
    from model.evaluation import evaluate
    from model.infer import exact_searcher, make_encoder

    net.eval()
    r = evaluate(users, make_encoder(net), exact_searcher(net), top_n=50, maxlen=net.cfg.maxlen,
                 batch_size=batch_size)
    return float(r["recall@50"])


def _checkpoint_net(meta: dict[str, Any]) -> Any:
    """The network a checkpoint was trained with. Keys a checkpoint written before the option existed
    lacks take what the network was then (no recency weights, one shared bilinear map); newer options
    take their dataclass default, which is their "off"."""
    from model.network import NetConfig

    return NetConfig(**{"recency": False, "bilinear": "shared", **meta["net"]})


def _net_dict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def train_step(
    net: Any, opt: Any, sampler: Any, batch: Any, n_neg: int, routing_rng: np.random.Generator | None
) -> float:
    """One optimizer step on a Batch; returns the loss."""
    import paddle

    neg = sampler.draw(n_neg)
    target_log_q = sampler.log_expected_count(batch.target, neg.tries)
    if routing_rng is not None and hasattr(net.tower, "resample"):
        net.tower.resample(routing_rng, len(batch.target))
    loss = net(
        paddle.to_tensor(batch.hist), paddle.to_tensor(batch.length), paddle.to_tensor(batch.target),
        paddle.to_tensor(neg.ids), paddle.to_tensor(neg.log_q), paddle.to_tensor(target_log_q),
    )
    loss.backward()
    opt.step()
    opt.clear_grad()
    return float(loss)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.trainer", description="train MIND (PaddleRec config)")
    p.add_argument("-m", "--config", metavar="FILE", help="YAML config")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue after the latest checkpoint")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:

    args = parse_args(argv)
    logs.setup()
    settings = load(args.config, overrides=args.override)
    out = train(settings, resume=True if args.resume else None)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
