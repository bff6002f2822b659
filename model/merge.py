"""Merge K per-interest candidate lists into one ranked list: the same function serves
evaluation and the streaming worker, so offline metrics measure what production returns."""

from __future__ import annotations

from collections.abc import Iterable
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
    if top_k <= 0:
        return []
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if ids.shape != scores.shape or ids.ndim != 2:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must both be [K, N]")
    k = ids.shape[0] if n_interests is None else max(0, min(int(n_interests), ids.shape[0]))
    interest = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)[:k].ravel()
    flat_ids, flat_scores = ids[:k].ravel(), scores[:k].ravel()
    keep = flat_ids >= 0
    excluded = np.fromiter(exclude, dtype=np.int64)
    if excluded.size:
        keep &= ~np.isin(flat_ids, excluded)
    flat_ids, flat_scores, interest = flat_ids[keep], flat_scores[keep], interest[keep]
    # Best score first, then smaller id; np.unique keeps the first occurrence of each id.
    order = np.lexsort((flat_ids, -flat_scores.astype(np.float64)))
    flat_ids, flat_scores, interest = flat_ids[order], flat_scores[order], interest[order]
    _, first = np.unique(flat_ids, return_index=True)
    first.sort()
    first = first[:top_k]
    return [
        Candidate(int(i), float(s), int(j))
        for i, s, j in zip(flat_ids[first], flat_scores[first], interest[first], strict=True)
    ]
