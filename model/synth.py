"""Synthetic click data with planted multi-interest structure, in the AmazonBook / ComiRec format.

Why: the real AmazonBook sample shipped with the project is tiny (1.5k users, eval items mostly never
seen in training), so it cannot show whether a multi-interest model works. Here the ground truth is
known: items belong to topics (clusters), every user follows 2-4 topics, and clicks interleave them.

Generative model (all numpy, deterministic for a seed):
- items 1..M are split at random into C clusters; inside a cluster, item popularity is Zipf-like;
  clusters themselves have mildly skewed popularity (so most-popular is a weak but non-zero baseline);
- a user picks 2-4 distinct clusters (popularity-weighted) with Dirichlet interest weights;
- its sequence is a sticky Markov chain over its interests (stay with probability ``stickiness``,
  otherwise draw an interest by weight), each click an item of the current cluster; with probability
  ``noise`` a click is a uniformly random item instead;
- eval users (disjoint from train users, as in ComiRec) are generated the same way; their first
  ``hist_frac`` clicks are the history and the rest are the eval items (so eval items come from the
  same interests as the history).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike[str]


@dataclass
class SynthDataset:
    """What was written, plus the planted truth (for tests and analysis)."""

    out_dir: Path
    meta: dict
    item_cluster: np.ndarray = field(repr=False)  # int64 [M + 1]; index 0 (padding) = -1
    user_interests: list[np.ndarray] = field(repr=False)  # per user (train then eval): cluster ids
    train_seqs: dict[int, np.ndarray] = field(repr=False)
    eval_users: list[tuple[int, np.ndarray, np.ndarray]] = field(repr=False)  # (uid, hist, eval)


@dataclass(frozen=True)
class SynthParams:
    clusters: int = 0  # 0: about one cluster per 25 items (at least 2)
    min_interests: int = 2
    max_interests: int = 4
    min_len: int = 10
    max_len: int = 60
    mean_len: float = 25.0
    zipf: float = 0.8  # within-cluster popularity exponent
    cluster_zipf: float = 0.5  # popularity exponent across clusters
    stickiness: float = 0.5
    noise: float = 0.05
    eval_frac: float = 0.1  # share of users that are eval users
    hist_frac: float = 0.8


def _zipf_weights(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w[rng.permutation(n)]


def generate(users: int, items: int, seed: int, params: SynthParams | None = None) -> tuple[
    np.ndarray, list[np.ndarray], np.ndarray, np.ndarray, dict
]:
    """Sequences for ``users`` users: ``(item_cluster, interests, seq_user, seq_items, info)``.

    ``seq_user``/``seq_items`` are flat arrays (users in order, clicks in order within a user).
    """
    p = params or SynthParams()
    if users < 2 or items < 2:
        raise ValueError(f"need at least 2 users and 2 items, got {users}, {items}")
    if not 1 <= p.min_interests <= p.max_interests:
        raise ValueError("need 1 <= min_interests <= max_interests")
    if not 2 <= p.min_len <= p.max_len:
        raise ValueError("need 2 <= min_len <= max_len")
    n_clusters = p.clusters or max(2, items // 25)
    n_clusters = min(n_clusters, items)
    if p.max_interests > n_clusters:
        raise ValueError(f"max_interests {p.max_interests} > clusters {n_clusters}")
    rng = np.random.default_rng(seed)

    # Items -> clusters: a random permutation cut into near-equal parts, so ids carry no structure.
    perm = rng.permutation(np.arange(1, items + 1, dtype=np.int64))
    sizes = np.full(n_clusters, items // n_clusters, dtype=np.int64)
    sizes[: items % n_clusters] += 1
    bounds = np.r_[0, np.cumsum(sizes)]
    item_cluster = np.full(items + 1, -1, dtype=np.int64)
    cluster_of_slot = np.repeat(np.arange(n_clusters), sizes)
    item_cluster[perm] = cluster_of_slot
    # Within-cluster cumulative popularity, offset by the cluster index so one searchsorted serves all.
    within = np.concatenate([_zipf_weights(int(n), p.zipf, rng) for n in sizes])
    csum = np.cumsum(within)
    cluster_total = csum[bounds[1:] - 1] - np.r_[0.0, csum[bounds[1:-1] - 1]]
    start_sum = np.r_[0.0, csum[bounds[1:-1] - 1]]
    cum = (csum - np.repeat(start_sum, sizes)) / np.repeat(cluster_total, sizes)
    cum += cluster_of_slot
    cum[bounds[1:] - 1] = np.arange(1, n_clusters + 1)  # exact upper edge of every cluster

    # Users -> 2..4 distinct clusters, popularity-weighted without replacement (Gumbel top-k).
    cluster_w = _zipf_weights(n_clusters, p.cluster_zipf, rng)
    n_int = rng.integers(p.min_interests, p.max_interests + 1, size=users)
    kmax = p.max_interests
    keys = np.log(cluster_w)[None, :] + rng.gumbel(size=(users, n_clusters))
    top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
    weights = rng.gamma(3.0, size=(users, kmax))  # Dirichlet(3): mixed, rarely one-sided
    weights[np.arange(kmax)[None, :] >= n_int[:, None]] = 0.0
    weights /= weights.sum(1, keepdims=True)
    cumw = np.cumsum(weights, 1)

    # Sequence lengths: min_len + geometric tail, capped.
    extra = rng.geometric(1.0 / max(1.0, p.mean_len - p.min_len + 1), size=users) - 1
    lengths = np.minimum(p.min_len + extra, p.max_len).astype(np.int64)
    seq_user = np.repeat(np.arange(users, dtype=np.int64), lengths)
    total = int(lengths.sum())
    first = np.r_[0, np.cumsum(lengths)[:-1]]

    # Sticky interest chain: the interest at t is the fresh draw at the last switch point <= t.
    u01 = rng.random(total)
    fresh = (u01[:, None] > cumw[seq_user]).sum(1)
    fresh = np.minimum(fresh, n_int[seq_user] - 1)
    switch = rng.random(total) >= p.stickiness
    switch[first] = True
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(total), 0))
    slot = fresh[last_switch]
    clusters = top[seq_user, slot]
    pick = np.searchsorted(cum, clusters + rng.random(total), side="right")
    pick = np.minimum(pick, bounds[clusters + 1] - 1)
    seq_items = perm[pick]
    noisy = rng.random(total) < p.noise
    seq_items[noisy] = rng.integers(1, items + 1, size=int(noisy.sum()))

    interests = [top[u, : n_int[u]].copy() for u in range(users)]
    info = {"clusters": int(n_clusters), "clicks": total, "mean_len": float(lengths.mean())}
    return item_cluster, interests, seq_user, seq_items, info


def write_dataset(
    out_dir: PathLike,
    users: int,
    items: int,
    seed: int,
    params: SynthParams | None = None,
    **overrides: float,
) -> SynthDataset:
    """Generate and write ``out_dir/train/data.txt``, ``out_dir/valid/part-0`` and ``meta.json``.

    ``users`` counts train + eval users; eval users (``eval_frac`` of them, at least 1) get the
    highest user ids. ``overrides`` replace :class:`SynthParams` fields, e.g. ``clusters=50``.
    """
    p = params or SynthParams()
    if overrides:
        p = SynthParams(**{**asdict(p), **overrides})
    item_cluster, interests, seq_user, seq_items, info = generate(users, items, seed, p)
    n_eval = min(users - 1, max(1, round(users * p.eval_frac)))
    n_train = users - n_eval
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "valid").mkdir(parents=True, exist_ok=True)

    starts = np.r_[0, np.flatnonzero(np.diff(seq_user)) + 1]
    lengths = np.diff(np.r_[starts, seq_user.size])
    order = np.arange(seq_user.size) - np.repeat(starts, lengths)
    is_train = seq_user < n_train
    tu, ti, to = seq_user[is_train], seq_items[is_train], order[is_train]
    with open(out / "train" / "data.txt", "w") as f:
        rows = zip(tu.tolist(), ti.tolist(), to.tolist(), strict=True)
        f.write("".join(f"{a},{b},{c}\n" for a, b, c in rows))
    train_seqs = {int(u): seq_items[starts[u] : starts[u] + lengths[u]] for u in range(n_train)}

    eval_users: list[tuple[int, np.ndarray, np.ndarray]] = []
    lines = []
    for u in range(n_train, users):
        seq = seq_items[starts[u] : starts[u] + lengths[u]]
        cut = min(len(seq) - 1, max(1, int(len(seq) * p.hist_frac)))
        hist, ev = seq[:cut], seq[cut:]
        eval_users.append((u, hist, ev))
        lines.append(
            f"user_id:{u} target_item:0 "
            + " ".join(f"hist_item:{i}" for i in hist.tolist())
            + " "
            + " ".join(f"eval_item:{i}" for i in ev.tolist())
            + "\n"
        )
    with open(out / "valid" / "part-0", "w") as f:
        f.write("".join(lines))

    meta = {
        "format": "amazonbook/comirec",
        "users": users,
        "train_users": n_train,
        "eval_users": n_eval,
        "items": items,
        "item_count": items + 1,  # embedding rows incl. padding id 0
        "seed": seed,
        **info,
        "params": asdict(p),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return SynthDataset(out, meta, item_cluster, interests, train_seqs, eval_users)
