"""Merge K per-interest candidate lists into one ranked list: the same function serves
evaluation and the streaming worker, so offline metrics measure what production returns."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np


class Candidate(NamedTuple):
    item_id: int
    score: float
    interest: int  # index of the interest whose search found the best score


def merge(
    ids: np.ndarray,
    scores: np.ndarray,
    top_k: int,
    n_interests: int | None = None,
    exclude: Iterable[int] = (),
) -> list[Candidate]:
    """Union of the interests' hits, deduped by item keeping its best score, minus ``exclude``,
    ranked by score (ties by item id, so the order is deterministic), cut to ``top_k``.

    ``ids``/``scores`` are [K, N]; ids < 0 are padding (a search that found fewer than N).
    Only the first ``n_interests`` rows are used (MIND's dynamic interest number).
    """
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if ids.shape != scores.shape or ids.ndim != 2:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must both be [K, N]")
    if top_k <= 0:
        return []
    # One implementation for one user (evaluation) and for a batch (the worker): merge_batch.
    n = None if n_interests is None else [n_interests]
    return merge_batch(ids[None], scores[None], [top_k], n, [exclude])[0]


def merge_batch(
    ids: np.ndarray,
    scores: np.ndarray,
    top_k: Sequence[int] | np.ndarray,
    n_interests: Sequence[int] | np.ndarray | None = None,
    exclude: Sequence[Iterable[int]] | None = None,
) -> list[list[Candidate]]:
    """:func:`merge` for B users at once (``ids``/``scores`` [B, K, N], ``top_k``/``n_interests`` [B],
    ``exclude`` one id list per user), in a few whole-batch numpy sorts: per-user calls cost ~0.2 ms
    each, a sixth of a serving worker's CPU. ``merge`` is this function for one user."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if ids.shape != scores.shape or ids.ndim != 3:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must both be [B, K, N]")
    b, k, _ = ids.shape
    cut = np.asarray(top_k, dtype=np.int64).reshape(b)
    n_int = np.full(b, k) if n_interests is None else np.clip(np.asarray(n_interests, dtype=np.int64), 0, k)
    user = np.broadcast_to(np.arange(b)[:, None, None], ids.shape)
    interest = np.broadcast_to(np.arange(k)[None, :, None], ids.shape)
    keep = (ids >= 0) & (interest < n_int.reshape(b, 1, 1))
    u, i, s, j = user[keep], ids[keep], scores[keep], interest[keep]  # (user, interest, rank) order
    ex = [
        np.asarray(e, dtype=np.int64).ravel() if isinstance(e, np.ndarray | list | tuple) else np.fromiter(e, np.int64)
        for e in exclude or ()
    ]
    ex_i = np.concatenate(ex) if ex else np.zeros(0, np.int64)
    ex_u = np.repeat(np.arange(len(ex)), [e.size for e in ex]) if ex else np.zeros(0, np.int64)
    # (user, item) pairs as one int64 key; items renumbered densely first if raw ids could overflow it
    top = int(max(i.max(initial=0), ex_i.max(initial=0))) + 1
    if b * top < 2**62:
        pair, ex_pair = u * top + i, ex_u * top + ex_i
    else:
        _, dense = np.unique(np.concatenate([i, ex_i]), return_inverse=True)
        pair, ex_pair = u * (dense.size + 1) + dense[: i.size], ex_u * (dense.size + 1) + dense[i.size :]
    if ex_pair.size:
        ex_pair = np.sort(ex_pair)
        at = np.minimum(np.searchsorted(ex_pair, pair), ex_pair.size - 1)
        keep = ex_pair[at] != pair
        u, i, s, j, pair = u[keep], i[keep], s[keep], j[keep], pair[keep]
    # Order by user, best score first, then smaller id: one stable int sort, a second only when scores
    # tie (numpy's 3-key lexsort costs 3x). The score becomes an unsigned key that sorts descending;
    # -0.0 is folded into 0.0.
    bits = (s + np.float32(0.0)).view(np.int32).astype(np.int64)
    ascending = np.where(bits < 0, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    key = (u << 32) | (0xFFFFFFFF - ascending)
    order = np.argsort(key, kind="stable")
    if np.any(key[order][1:] == key[order][:-1]):  # equal scores within a user: ids break the tie
        order = np.argsort(i, kind="stable")
        order = order[np.argsort(key[order], kind="stable")]  # equal (user, score, id): lower interest first
    u, i, s, j, pair = u[order], i[order], s[order], j[order], pair[order]
    _, first = np.unique(pair, return_index=True)  # first = best-scoring occurrence of each (user, item)
    first.sort()
    u, i, s, j = u[first], i[first], s[first], j[first]
    starts = np.searchsorted(u, np.arange(b + 1))
    rank = np.arange(u.size) - starts[u]
    keep = rank < cut[u]
    u, i, s, j = u[keep], i[keep], s[keep], j[keep]
    bounds = np.searchsorted(u, np.arange(b + 1))
    make = functools.partial(tuple.__new__, Candidate)  # Candidate(...) without its per-call checks
    rows = list(map(make, zip(i.tolist(), s.tolist(), j.tolist(), strict=True)))
    return [rows[bounds[x] : bounds[x + 1]] for x in range(b)]
