"""Item co-occurrence neighbours for co-occurrence item vectors (after SimEmb, the paper behind the
SimRec datasets): item ``i``'s vector is ``e_i = W_i + sum_j A_ij W_j`` over its ``top`` most frequent
neighbours ``j`` within ``window`` clicks of it in the training sequences, ``A`` row-normalised.

Why: an item's own vector learns only from its own (few) clicks; borrowing its neighbours' vectors
shares what they learned, which matters on sparse 5-core data (docs/benchmarks.md). The table is
only needed to *train*: the export writes the materialised ``e`` (``RecallNetwork.item_vectors``),
so search and the user tower see ordinary item vectors.

Pure numpy: sequences in, ``(ids, weights)`` out.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def cooc_neighbors(
    seqs: Iterable[np.ndarray], item_count: int, window: int, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """``ids [item_count, top + 1]`` int64 and ``weights`` float32, one row per item id: column 0 is
    the item itself (weight 1), columns 1.. its neighbours by descending count (ties: smaller id
    first), weights = count / the kept neighbours' total; unused slots are id 0 with weight 0.
    Row 0 (padding) is all zero, so the padding vector stays zero.

    Two clicks co-occur when they are at most ``window`` places apart in one user's sequence, in
    either order; an item next to itself (a repeat) is not its own neighbour."""
    if item_count < 1 or window < 1 or top < 0:
        raise ValueError(f"need item_count >= 1, window >= 1, top >= 0; got {item_count}, {window}, {top}")
    ids = np.zeros((item_count, top + 1), dtype=np.int64)
    weights = np.zeros((item_count, top + 1), dtype=np.float32)
    ids[:, 0] = np.arange(item_count)
    weights[1:, 0] = 1.0
    if top == 0:
        return ids, weights
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for s in seqs:
        s = np.asarray(s, dtype=np.int64)
        for d in range(1, min(window, s.size - 1) + 1):
            src += [s[:-d], s[d:]]
            dst += [s[d:], s[:-d]]
    if not src:
        return ids, weights
    a, b = np.concatenate(src), np.concatenate(dst)
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= item_count):
        raise ValueError(f"item ids must be in [0, {item_count}), got {min(a.min(), b.min())}..{max(a.max(), b.max())}")
    keep = a != b
    pair, count = np.unique(a[keep] * item_count + b[keep], return_counts=True)
    a, b = pair // item_count, pair % item_count
    # Per row: most frequent first, then smaller id (pairs are already sorted by (a, b)).
    order = np.lexsort((b, -count, a))
    a, b, count = a[order], b[order], count[order]
    starts = np.searchsorted(a, a, side="left")
    rank = np.arange(a.size) - starts
    sel = rank < top
    a, b, count, rank = a[sel], b[sel], count[sel].astype(np.float64), rank[sel]
    total = np.bincount(a, weights=count, minlength=item_count)
    ids[a, rank + 1] = b
    weights[a, rank + 1] = (count / total[a]).astype(np.float32)
    return ids, weights
