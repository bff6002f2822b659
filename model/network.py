"""MIND (multi-interest network with dynamic routing), ComiRec-SA (self-attentive multi-interest) and
the single-vector baseline, Paddle dygraph.

The user tower is a separate Layer that takes history *vectors* ``[B, L, D]`` and lengths ``[B]`` and
returns interests ``[B, K, D]`` plus ``n_interests [B]``: training is an embedding lookup followed by
the tower, and the export is the tower alone (a few KB instead of the whole item table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from model.cooc import cooc_neighbors

NEG_INF = -1e9


@dataclass(frozen=True)
class NetConfig:
    """The shape-defining hyper-parameters (what a checkpoint must record to rebuild the network)."""

    model: str = "mind"  # mind | comirec_sa | single_vector
    item_count: int = 2
    embedding_dim: int = 64
    hidden_size: int = 64
    maxlen: int = 20
    capsual_iters: int = 3
    capsual_max_k: int = 2
    capsual_init_std: float = 1.0
    pow_p: float = 1.0
    dynamic_k: bool = False
    relu_layer: bool = False
    resample_routing: bool = False
    sparse_embedding: bool = True
    routing_per_sample: bool = True  # MIND: fresh random routing logits per training sample
    hard_neg_beta: float = 0.0  # REMI interest-aware hard negatives (0: off)
    routing_reg: float = 0.0  # REMI routing/attention variance penalty lambda (0: off)
    bilinear: str = "none"  # MIND: none (S = I) | shared: one map S | per_interest: S_k (ComiRec-DR style)
    readout: str = "auto"  # training readout: attention (label-aware, pow_p) | argmax (ComiRec) | auto
    bilinear_init: str = "identity"  # MIND: S (each S_k) starts as identity + N(0, 0.01/D) | normal: N(0, 1/D)
    global_interest: bool = False  # MIND: the mean of the history vectors as one more interest (K + 1)
    recency: bool = True  # MIND, single_vector: a learned weight per position back from the newest behaviour
    cooc_neighbors: int = 0  # co-occurrence item vectors: neighbours mixed into each item's vector (0: off)
    cooc_learned: bool = False  # a learned weight per neighbour rank on top of the co-occurrence weights
    # (settings' hyper_parameters.recency: auto = on for mind only)

    @classmethod
    def from_settings(cls, hp: Any, item_count: int) -> NetConfig:
        return cls(
            model=hp.model, item_count=item_count, embedding_dim=hp.embedding_dim,
            hidden_size=hp.hidden_size, maxlen=hp.maxlen, capsual_iters=hp.capsual_iters,
            capsual_max_k=hp.capsual_max_k, capsual_init_std=hp.capsual_init_std, pow_p=hp.pow_p,
            dynamic_k=hp.dynamic_k, relu_layer=hp.relu_layer, resample_routing=hp.resample_routing,
            sparse_embedding=hp.sparse_embedding, routing_per_sample=hp.routing_per_sample,
            hard_neg_beta=hp.hard_neg_beta, routing_reg=hp.routing_reg, readout=hp.readout,
            bilinear=hp.bilinear, bilinear_init=hp.bilinear_init, global_interest=hp.global_interest,
            recency=hp.recency == "true" or (hp.recency == "auto" and hp.model == "mind"),
            cooc_neighbors=hp.cooc_neighbors, cooc_learned=hp.cooc_learned,
        )

    @property
    def k(self) -> int:
        """Interest vectors the tower outputs (what is searched per user)."""
        if self.model == "mind":
            return self.capsual_max_k + int(self.global_interest)
        return self.capsual_max_k if self.model == "comirec_sa" else 1

    def validate(self) -> None:
        if self.model not in ("mind", "comirec_sa", "single_vector"):
            raise ValueError(f"hyper_parameters.model: expected mind|comirec_sa|single_vector, got {self.model!r}")
        if self.bilinear not in ("none", "shared", "per_interest"):
            raise ValueError(f"hyper_parameters.bilinear: expected none|shared|per_interest, got {self.bilinear!r}")
        if self.bilinear_init not in ("identity", "normal"):
            raise ValueError(
                f"hyper_parameters.bilinear_init: expected identity|normal, got {self.bilinear_init!r}")
        if self.readout not in ("auto", "attention", "argmax"):
            raise ValueError(f"hyper_parameters.readout: expected auto|attention|argmax, got {self.readout!r}")
        if self.item_count < 2:
            raise ValueError(f"hyper_parameters.item_count: need a real item, got {self.item_count}")
        if self.model == "mind" and self.bilinear == "none" and self.hidden_size != self.embedding_dim:
            raise ValueError(
                "hyper_parameters.hidden_size must equal embedding_dim with bilinear=none (no map to change "
                f"the size; use bilinear=shared or per_interest): {self.hidden_size} != {self.embedding_dim}"
            )
        if self.model == "mind" and not self.relu_layer and self.hidden_size != self.embedding_dim:
            raise ValueError(
                "hyper_parameters.hidden_size must equal embedding_dim unless relu_layer=true "
                f"(interests are scored against item embeddings): {self.hidden_size} != {self.embedding_dim}"
            )


def squash(x: paddle.Tensor, eps: float = 1e-9) -> paddle.Tensor:
    """Capsule squash: keeps the direction, maps the norm ``n`` to ``n^2 / (1 + n^2)`` (< 1)."""
    sq = paddle.sum(x * x, axis=-1, keepdim=True)
    return x * (sq / (1.0 + sq) / paddle.sqrt(sq + eps))


def valid_mask(lengths: paddle.Tensor, seq_len: int) -> paddle.Tensor:
    """[B, L] float32: 1 at the positions before each history's length (histories are right-padded)."""
    pos = paddle.arange(seq_len, dtype="int64").unsqueeze(0)  # [1, L]
    return (pos < lengths.astype("int64").unsqueeze(1)).astype("float32")


def history_mean(hist: paddle.Tensor, lengths: paddle.Tensor, valid: paddle.Tensor) -> paddle.Tensor:
    """[B, D]: the mean of each history's valid vectors (``valid`` [B, L] from :func:`valid_mask`)."""
    count = paddle.clip(lengths.astype("float32"), min=1.0).unsqueeze(-1)
    return paddle.sum(hist * valid.unsqueeze(-1), axis=1) / count


class RecencyWeights(nn.Layer):
    """A learned weight ``exp(r_j)`` on each history vector, ``j`` = places back from the newest one
    (0 = the newest). Starts at 1 for every position (``r = 0``): the towers start exactly as without it.

    Why: the eval items are what comes *next*, and the newest behaviours say most about that, which
    neither routing nor mean pooling can see (both are order-free). Measured in docs/benchmarks.md."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen
        self.log_w = self.create_parameter([maxlen, 1], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, hist: paddle.Tensor, lengths: paddle.Tensor) -> paddle.Tensor:
        """hist [B, L, D] (right-padded), lengths [B] -> hist with row l scaled by exp(r[len - 1 - l])."""
        pos = paddle.arange(hist.shape[1], dtype="int64").unsqueeze(0)  # [1, L]
        back = lengths.astype("int64").unsqueeze(1) - 1 - pos  # [B, L]; < 0 on padding (zeroed anyway)
        # maximum/minimum, not clip: Paddle Inference 3.3.1 drops clip's int64 bounds (interest_count).
        back = paddle.minimum(paddle.maximum(back, paddle.zeros_like(back)), paddle.full_like(back, self.maxlen - 1))
        # A one-hot matmul instead of a gather: the same ops the exported tower already runs.
        log_w = paddle.matmul(F.one_hot(back, self.maxlen), self.log_w)  # [B, L, 1]
        return hist * paddle.exp(log_w)


def interest_count(lengths: paddle.Tensor, k_max: int) -> paddle.Tensor:
    """MIND's dynamic interest number ``max(1, min(K, floor(log2 |history|)))`` as int64 [B].

    Counted with integer comparisons (``len >= 2^j``) rather than a float log2, which can land just
    below an integer for exact powers of two."""
    lengths = lengths.astype("int64")
    n = paddle.zeros_like(lengths)
    for j in range(1, k_max + 1):
        n = n + (lengths >= 2**j).astype("int64")
    # n <= k_max by construction. (Not paddle.clip: Paddle Inference 3.3.1 drops clip's int64 min.)
    return paddle.maximum(n, paddle.ones_like(n))


class CapsuleTower(nn.Layer):
    """B2I dynamic routing (MIND): over the item vectors themselves (``bilinear=none``, the default), or
    through one shared bilinear map S (``shared``, the reference) or one per interest (``per_interest``,
    as ComiRec-DR), started near the identity (``bilinear_init``); random routing logits, squash."""

    def __init__(self, cfg: NetConfig, routing_seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, k, length = cfg.embedding_dim, cfg.hidden_size, cfg.capsual_max_k, cfg.maxlen
        self.per_interest = cfg.bilinear == "per_interest"
        shape = [k, d, h] if self.per_interest else [d, h]
        if cfg.bilinear == "none":
            # Routing over the item vectors themselves (S = I, nothing to learn): the capsules live in the
            # space of the tied item vectors they are scored against. Measured better than learned S_k
            # on Beauty, Yelp and Toys, level on Retailrocket (docs/benchmarks.md, model quality).
            self.bilinear = None
        elif cfg.bilinear_init == "identity":
            # S_k = I + small noise: training starts from (routing-weighted) mean pooling of the item
            # vectors, the single vector's strong start, instead of a random bilinear similarity it must
            # first learn; the noise makes the K maps differ. Measured in docs/benchmarks.md (model quality).
            noise = np.random.default_rng(routing_seed + 1).normal(0.0, 0.1 / np.sqrt(d), shape)
            init = (np.broadcast_to(np.eye(d, h), shape) + noise).astype(np.float32)
            self.bilinear = self.create_parameter(shape, default_initializer=nn.initializer.Assign(init))
        else:
            self.bilinear = self.create_parameter(
                shape, default_initializer=nn.initializer.Normal(std=1.0 / np.sqrt(d)))
        # Routing logits are drawn once and never trained (MIND §3.2); a persistable buffer so the
        # checkpoint and the export carry the very same values.
        rng = np.random.default_rng(routing_seed)
        logits = (rng.standard_normal((1, k, length)) * cfg.capsual_init_std).astype("float32")
        self.register_buffer("routing_logits", paddle.to_tensor(logits), persistable=True)
        self.readout = nn.Linear(h, d) if cfg.relu_layer else None
        self.recency = RecencyWeights(length) if cfg.recency else None
        # Per-batch routing logits for resample_routing (training only; set by the trainer from its
        # numpy Generator so runs stay reproducible and resumable). A numpy array, not a Tensor, so
        # the Layer does not register it as a buffer: never saved, never exported.
        self.train_logits: np.ndarray | None = None
        # The last training forward's routing weights [B, K, L] (for routing_reg); a dict, not an
        # attribute Tensor, so it is never a buffer.
        self.aux: dict[str, paddle.Tensor] = {}

    def resample(self, rng: np.random.Generator, batch: int = 1) -> None:
        """Draw fresh routing logits for the next training batch: one ``[1, K, L]`` set for the batch
        (resample_routing) or one per sample ``[batch, K, L]`` (routing_per_sample)."""
        _, k, length = tuple(self.routing_logits.shape)
        shape = (batch if self.cfg.routing_per_sample else 1, k, length)
        self.train_logits = (rng.standard_normal(shape) * self.cfg.capsual_init_std).astype("float32")

    def forward(
        self, hist: paddle.Tensor, lengths: paddle.Tensor
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """hist [B, L, D] float32 (L <= maxlen, padded on the right), lengths [B] int64
        -> (interests [B, K, D], n_interests [B] int64). Positions >= length never matter."""
        k = self.cfg.capsual_max_k
        seq_len = hist.shape[1]
        lengths = lengths.astype("int64")
        valid = valid_mask(lengths, seq_len)  # [B, L]
        if self.recency is not None:
            hist = self.recency(hist, lengths)
        if self.per_interest and self.bilinear is not None:
            # Behaviour l as seen by interest k: a list of K [B, L, H] (K batched 3-D matmuls train ~6x
            # faster in Paddle 3.3 on CPU than one [B, K, L, H] tensor with 4-D transposes/broadcasts).
            low_k = [paddle.matmul(hist, self.bilinear[j]) * valid.unsqueeze(-1) for j in range(k)]
        else:
            low = hist if self.bilinear is None else paddle.matmul(hist, self.bilinear)
            low = low * valid.unsqueeze(-1)  # [B, L, H]; padding -> 0
        # Routing iterations do not backpropagate (as in MIND/PaddleRec), unless routing_reg needs
        # a gradient through the routing weights.
        reg = self.training and self.cfg.routing_reg > 0

        if self.training and self.train_logits is not None:
            b = paddle.to_tensor(self.train_logits[:, :, :seq_len])
        else:
            b = self.routing_logits[:, :, :seq_len]
        # b stays [1, K, L] until the first update; broadcasting does the tiling.
        mask = valid.unsqueeze(1)  # [B, 1, L]

        def weights(logits: paddle.Tensor) -> paddle.Tensor:
            # Softmax over the K interests for each behaviour, then zero the padded behaviours.
            return F.softmax(logits, axis=1) * mask

        def pool(w: paddle.Tensor, fixed: bool) -> paddle.Tensor:  # [B, K, L] -> [B, K, H]
            if self.per_interest:
                return paddle.concat([
                    paddle.matmul(w[:, j : j + 1], low_k[j].detach() if fixed else low_k[j]) for j in range(k)
                ], axis=1)
            return paddle.matmul(w, low.detach() if fixed else low)

        def agree(caps: paddle.Tensor) -> paddle.Tensor:  # <c_k, low_kl> [B, K, L]
            if self.per_interest:
                return paddle.concat([
                    paddle.matmul(caps[:, j : j + 1], low_k[j] if reg else low_k[j].detach(), transpose_y=True)
                    for j in range(k)
                ], axis=1)
            return paddle.matmul(caps, low if reg else low.detach(), transpose_y=True)

        for _ in range(self.cfg.capsual_iters - 1):
            caps = squash(pool(weights(b), fixed=not reg))  # [B, K, H]
            b = b + agree(caps)  # [B, K, L]
        w = weights(b if reg else b.detach())
        if reg:
            self.aux["routing"] = w
        interests = squash(pool(w, False))  # [B, K, H]
        if self.readout is not None:
            interests = F.relu(self.readout(interests))

        n = interest_count(lengths, k) if self.cfg.dynamic_k else paddle.full_like(lengths, k)
        keep = (paddle.arange(k, dtype="int64").unsqueeze(0) < n.unsqueeze(1)).astype("float32")
        interests = interests * keep.unsqueeze(-1)
        if self.cfg.global_interest:
            # The history's mean vector (the single vector) first, so "the first n are valid" holds.
            mean = history_mean(hist, lengths, valid).unsqueeze(1)  # [B, 1, D]
            return paddle.concat([mean, interests], axis=1), n + 1
        return interests, n


class MeanPoolTower(nn.Layer):
    """Single-vector baseline (YouTube-DNN style): mean of the history vectors (+ a ReLU dense layer);
    with ``recency`` each vector is first scaled by its learned position weight."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embedding_dim
        self.dense = nn.Linear(d, d) if cfg.relu_layer else None
        self.recency = RecencyWeights(cfg.maxlen) if cfg.recency else None

    def forward(
        self, hist: paddle.Tensor, lengths: paddle.Tensor
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        lengths = lengths.astype("int64")
        if self.recency is not None:
            hist = self.recency(hist, lengths)
        user = history_mean(hist, lengths, valid_mask(lengths, hist.shape[1]))
        if self.dense is not None:
            user = F.relu(self.dense(user))
        return user.unsqueeze(1), paddle.ones_like(lengths)


class SelfAttentiveTower(nn.Layer):
    """ComiRec-SA: ``A = softmax_L(W2 tanh(W1 (E + P)))`` over the valid positions, interests ``A E``.

    ``W1: D -> 4D`` (tanh), ``W2: 4D -> K``, learned position embeddings ``P [maxlen, D]`` added to the
    attention input only (as in ComiRec's ``Model_ComiRec_SA``). Padded positions get weight exactly 0
    and their vectors are zeroed, so whatever the padded slots hold changes nothing."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k, length = cfg.embedding_dim, cfg.capsual_max_k, cfg.maxlen
        self.pos = self.create_parameter(
            [1, length, d], default_initializer=nn.initializer.Normal(std=1.0 / np.sqrt(d))
        )
        self.w1 = nn.Linear(d, 4 * d)
        self.w2 = nn.Linear(4 * d, k)
        self.aux: dict[str, paddle.Tensor] = {}

    def forward(
        self, hist: paddle.Tensor, lengths: paddle.Tensor
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        seq_len = hist.shape[1]
        lengths = lengths.astype("int64")
        valid = valid_mask(lengths, seq_len)  # [B, L]
        emb = hist * valid.unsqueeze(-1)
        x = emb + self.pos[:, :seq_len]
        logits = paddle.transpose(self.w2(paddle.tanh(self.w1(x))), [0, 2, 1])  # [B, K, L]
        mask = valid.unsqueeze(1)  # [B, 1, L]
        logits = logits + (1.0 - mask) * NEG_INF
        att = F.softmax(logits, axis=-1) * mask
        if self.training and self.cfg.routing_reg > 0:
            self.aux["routing"] = att
        interests = paddle.matmul(att, emb)  # [B, K, D]
        return interests, paddle.full_like(lengths, self.cfg.capsual_max_k)


def make_tower(cfg: NetConfig, routing_seed: int = 0) -> nn.Layer:
    if cfg.model == "mind":
        return CapsuleTower(cfg, routing_seed)
    if cfg.model == "comirec_sa":
        return SelfAttentiveTower(cfg)
    return MeanPoolTower(cfg)


def routing_variance_penalty(weights: paddle.Tensor, hidden: int) -> paddle.Tensor:
    """REMI's routing regularisation: for each interest the variance of its routing/attention
    weights over the positions, ``sum_b sum_k (sum_l (a_bkl - mean_l a_bk.)^2 / hidden)^2``
    (``diag(C C^T) / hidden`` with ``C`` the centred weights, squared L2 norm over K, summed over B)."""
    centred = weights - paddle.mean(weights, axis=-1, keepdim=True)
    diag = paddle.sum(centred * centred, axis=-1) / float(hidden)  # [B, K]
    return paddle.sum(diag * diag)


class RecallNetwork(nn.Layer):
    """Item embedding (row 0 = padding, all zero) + user tower + sampled-softmax loss.

    The output weights of the softmax are the item embedding itself (tied), so the vectors the
    user tower is trained against are exactly the vectors exported for search."""

    def __init__(self, cfg: NetConfig, routing_seed: int = 0) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.embedding_dim
        self.item_emb = nn.Embedding(
            cfg.item_count, d, padding_idx=0, sparse=cfg.sparse_embedding,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(std=1.0 / np.sqrt(d))),
        )
        w = self.item_emb.weight.numpy()
        w[0] = 0.0
        self.item_emb.weight.set_value(w)
        if cfg.cooc_neighbors:
            # Co-occurrence table (model/cooc.py), persistable so a checkpoint carries it; starts as
            # "each item alone" (the table of no clicks) until the trainer sets it from the training
            # data (set_cooc).
            ids, wts = cooc_neighbors((), cfg.item_count, 1, cfg.cooc_neighbors)
            self.register_buffer("cooc_ids", paddle.to_tensor(ids), persistable=True)
            self.register_buffer("cooc_w", paddle.to_tensor(wts), persistable=True)
            if cfg.cooc_learned:
                # One weight per neighbour rank (the item itself stays at 1), starting at 1 = the plain
                # co-occurrence mix: training learns how far to trust the k-th neighbour.
                self.cooc_rank_w = self.create_parameter(
                    [cfg.cooc_neighbors], default_initializer=nn.initializer.Constant(1.0))
        self.tower = make_tower(cfg, routing_seed)
        # auto: MIND's label-aware attention for mind, ComiRec's argmax for comirec_sa.
        auto = "argmax" if cfg.model == "comirec_sa" else "attention"
        self.readout = cfg.readout if cfg.readout != "auto" else auto

    def set_cooc(self, ids: np.ndarray, weights: np.ndarray) -> None:
        """Install the co-occurrence table ``model.cooc.cooc_neighbors`` built from the training data."""
        want = (self.cfg.item_count, self.cfg.cooc_neighbors + 1)
        if not self.cfg.cooc_neighbors or ids.shape != want or weights.shape != want:
            raise ValueError(
                f"co-occurrence table must be {want} (cooc_neighbors on), got {ids.shape}, {weights.shape}")
        self.cooc_ids.set_value(paddle.to_tensor(ids.astype(np.int64)))
        self.cooc_w.set_value(paddle.to_tensor(weights.astype(np.float32)))

    def vectors(self, ids: paddle.Tensor) -> paddle.Tensor:
        """Item ids (any shape) -> their vectors (shape + [D]): the embedding rows, or with
        ``cooc_neighbors`` each row plus its neighbours' rows mixed by the co-occurrence weights."""
        if not self.cfg.cooc_neighbors:
            return self.item_emb(ids)
        # Each distinct item and each distinct neighbour row once: the embedding's sparse gradient (and
        # lazy Adam's update) then has one row per distinct neighbour instead of 21 per id (padding
        # alone is most of a history batch).
        # (numpy's unique: paddle.unique takes seconds on CPU for a few thousand ids.)
        uniq, inv = np.unique(ids.numpy().reshape(-1), return_inverse=True)
        nbr = paddle.gather(self.cooc_ids, paddle.to_tensor(uniq), axis=0).numpy()  # [U, T + 1]
        rows, row_inv = np.unique(nbr.reshape(-1), return_inverse=True)
        w = paddle.gather(self.cooc_w, paddle.to_tensor(uniq), axis=0)  # [U, T + 1]
        if self.cfg.cooc_learned:
            w = w * self._rank_scale()
        w = w.unsqueeze(-1)
        base = paddle.gather(self.item_emb(paddle.to_tensor(rows)), paddle.to_tensor(row_inv.reshape(-1)), axis=0)
        d = self.cfg.embedding_dim
        mixed = paddle.sum(base.reshape([-1, nbr.shape[1], d]) * w, axis=1)  # [U, D]
        return paddle.gather(mixed, paddle.to_tensor(inv.reshape(-1)), axis=0).reshape([*ids.shape, d])

    def _rank_scale(self) -> paddle.Tensor:
        """``cooc_learned``: the scale of each column of the co-occurrence table [T + 1], the item itself 1."""
        return paddle.concat([paddle.ones([1], dtype=self.cooc_rank_w.dtype), self.cooc_rank_w])

    def _batch_vectors(
        self, hist: paddle.Tensor, target: paddle.Tensor, neg_ids: paddle.Tensor
    ) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """A training batch's vectors: history [B, L, D], targets [B, D], negatives [S, D].

        The three are looked up in one ``vectors`` call, so with co-occurrence vectors an item (or a
        neighbour row) shared between them is mixed, and its sparse gradient row built, once."""
        b, length = hist.shape
        flat = paddle.concat([hist.reshape([-1]), target.reshape([-1]), neg_ids.reshape([-1])])
        out = self.vectors(flat)
        h, t = b * length, b * length + target.shape[0]
        return out[:h].reshape([b, length, -1]), out[h:t], out[t:]

    def encode_ids(
        self, hist: paddle.Tensor, lengths: paddle.Tensor
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Histories of item ids [B, L] -> (interests [B, K, D], n_interests [B])."""
        return self.tower(self.vectors(hist), lengths)

    def item_vectors(self, chunk: int = 16384) -> np.ndarray:
        """The real items' vectors [item_count - 1, D] (ids 1..item_count-1, in id order): what is
        exported and searched, so with ``cooc_neighbors`` the mixed vectors, materialised."""
        table = self.item_emb.weight.numpy().astype(np.float32)
        if not self.cfg.cooc_neighbors:
            return table[1:]
        ids, w = self.cooc_ids.numpy(), self.cooc_w.numpy()
        if self.cfg.cooc_learned:
            w = w * self._rank_scale().numpy()
        out = np.empty((self.cfg.item_count - 1, table.shape[1]), dtype=np.float32)
        for lo in range(1, self.cfg.item_count, chunk):
            hi = min(lo + chunk, self.cfg.item_count)
            out[lo - 1 : hi - 1] = np.einsum("nt,ntd->nd", w[lo:hi], table[ids[lo:hi]])
        return out

    def user_vector(
        self, interests: paddle.Tensor, n: paddle.Tensor, target_emb: paddle.Tensor
    ) -> paddle.Tensor:
        """Label-aware attention: softmax over the valid interests of ``pow(<interest, target>, p)``.

        ``p`` is applied sign-preserving (``sign(x)|x|^p``) so a non-integer p never yields NaN."""
        if self.cfg.k == 1:
            return interests[:, 0]
        score = paddle.sum(interests * target_emb.unsqueeze(1), axis=-1)  # [B, K]
        k = self.cfg.k
        valid = paddle.arange(k, dtype="int64").unsqueeze(0) < n.unsqueeze(1)
        if self.readout == "argmax":
            # ComiRec: the interest closest to the target alone (hard selection).
            masked = paddle.where(valid, score, paddle.full_like(score, NEG_INF))
            pick = F.one_hot(paddle.argmax(masked, axis=1), k).astype(interests.dtype)
            return paddle.sum(interests * pick.unsqueeze(-1), axis=1)
        p = self.cfg.pow_p
        if p != 1.0:
            score = paddle.sign(score) * paddle.pow(paddle.abs(score), p)
        score = paddle.where(valid, score, paddle.full_like(score, NEG_INF))
        att = F.softmax(score, axis=1).unsqueeze(-1)
        return paddle.sum(interests * att, axis=1)

    def forward(
        self,
        hist: paddle.Tensor,
        lengths: paddle.Tensor,
        target: paddle.Tensor,
        neg_ids: paddle.Tensor,
        neg_log_q: paddle.Tensor,
        target_log_q: paddle.Tensor,
    ) -> paddle.Tensor:
        """Sampled-softmax loss (mean over the batch) with logQ correction and accidental-hit removal.

        hist [B, L] int64, lengths [B], target [B], neg_ids [S] (shared by the batch, unique),
        neg_log_q [S] and target_log_q [B] float32 (log expected counts from the sampler)."""
        hist_emb, target_emb, neg_emb = self._batch_vectors(hist, target, neg_ids)
        interests, n = self.tower(hist_emb, lengths)
        user = self.user_vector(interests, n, target_emb)  # [B, D]
        pos = paddle.sum(user * target_emb, axis=-1, keepdim=True) - target_log_q.unsqueeze(-1)
        raw = paddle.matmul(user, neg_emb, transpose_y=True)  # [B, S]
        neg = raw - neg_log_q.unsqueeze(0)
        hit = target.unsqueeze(1) == neg_ids.unsqueeze(0)  # the target drawn as its own negative
        neg = paddle.where(hit, paddle.full_like(neg, NEG_INF), neg)
        beta = self.cfg.hard_neg_beta
        if beta > 0:
            # REMI interest-aware hard negatives: negative j of row b weighs S * softmax_j(beta * s_bj)
            # (mean weight 1), i.e. + log of it on its logit; the weights carry no gradient.
            w = paddle.where(hit, paddle.full_like(raw, NEG_INF), beta * raw).detach()
            n_valid = paddle.sum((~hit).astype("float32"), axis=1, keepdim=True)
            neg = neg + (w - paddle.logsumexp(w, axis=1, keepdim=True) + paddle.log(n_valid))
        logits = paddle.concat([pos, neg], axis=1)
        # The true class is column 0. (cross_entropy, not log_softmax: Paddle 3.3's CPU log_softmax
        # takes ~23 ms on [128, 1281], cross_entropy 0.3 ms.)
        label = paddle.zeros([logits.shape[0], 1], dtype="int64")
        loss = F.cross_entropy(logits, label, reduction="mean")
        routing = getattr(self.tower, "aux", {}).pop("routing", None)
        if self.cfg.routing_reg > 0 and routing is not None:
            loss = loss + self.cfg.routing_reg * routing_variance_penalty(routing, self.cfg.hidden_size)
        return loss
