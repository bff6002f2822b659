"""AmazonBook / ComiRec data: readers, ComiRec training samples, padding and popularity.

Formats (ARCHITECTURE section 8):
- train rows ``uid,item_id,order`` (one click per line, any order; a user's sequence is its rows
  sorted by ``order``);
- eval lines ``user_id:U [target_item:T] hist_item:I ... eval_item:J ...``.

Item id 0 is padding: it never appears in the data and histories are padded with 0 on the right.
The train reader has a vectorised fast path (the full AmazonBook train set is ~8.9M rows) and
falls back to a line-by-line parse only to locate or skip malformed lines.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

PathLike = str | os.PathLike[str]

_TRAIN_HEADER = b"uid,item_id,order"
_MIN_PREV = 4  # ComiRec: a target needs at least 4 previous items


class DataError(ValueError):
    """A malformed input line; the message is ``FILE:LINE: reason`` (LINE is 1-based)."""


class EvalUser(NamedTuple):
    user_id: int
    hist: np.ndarray  # int64 [n_hist], in click order
    eval_items: np.ndarray  # int64 [n_eval], distinct, in file order


class Batch(NamedTuple):
    hist: np.ndarray  # int64 [B, maxlen], 0-padded on the right
    length: np.ndarray  # int64 [B], 1..maxlen
    target: np.ndarray  # int64 [B]


class TrainData(dict[int, np.ndarray]):
    """``user -> item ids in order`` plus ``skipped``: malformed lines dropped (strict=False)."""

    skipped: int = 0


class EvalData(list[EvalUser]):
    """Eval users plus ``skipped``: malformed lines dropped (strict=False)."""

    skipped: int = 0


def _files(path: PathLike) -> list[Path]:
    """A file, or every regular non-hidden file in a directory (sorted, so reads are reproducible)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"{p}: no data files in directory")
        return files
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    return [p]


# Bytes allowed in a well-formed train file: digits, '-', ',', '\n', '\r'.
_TRAIN_OK = np.zeros(256, dtype=bool)
_TRAIN_OK[np.frombuffer(b"0123456789-,\n\r", dtype=np.uint8)] = True


def _parse_train_fast(data: bytes) -> np.ndarray | None:
    """``[n, 3]`` int64 rows, or None when anything looks off (the slow path then says what)."""
    if data.startswith(_TRAIN_HEADER):
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    if not data.strip():
        return np.zeros((0, 3), dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    if not _TRAIN_OK[buf].all():
        return None
    text = data.rstrip(b"\r\n")
    buf = np.frombuffer(text, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    n_lines = newlines.size + 1
    commas = np.flatnonzero(buf == 44)
    per_line = np.bincount(np.searchsorted(newlines, commas), minlength=n_lines)
    if commas.size != 2 * n_lines or np.any(per_line != 2):
        return None  # includes blank lines (0 commas)
    try:
        with warnings.catch_warnings():
            # Older numpy warns and stops early on a bad token (caught by the size check), newer raises.
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(text.replace(b"\n", b",").decode("ascii"), dtype=np.int64, sep=",")
    except ValueError:
        return None
    if values.size != 3 * n_lines:
        return None
    rows = values.reshape(-1, 3)
    if rows.size and (rows[:, 0].min() < 0 or rows[:, 1].min() < 1):
        return None
    return rows


def _parse_train_slow(data: bytes, name: str, strict: bool) -> tuple[np.ndarray, int]:
    rows: list[tuple[int, int, int]] = []
    skipped = 0
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if not line or (lineno == 1 and line == _TRAIN_HEADER):
            continue
        parts = line.split(b",")
        reason = None
        if len(parts) != 3:
            reason = f"expected 3 comma-separated fields uid,item_id,order, got {len(parts)}"
        else:
            try:
                uid, item, order = (int(x) for x in parts)
            except ValueError:
                reason = f"not an integer in {line[:80]!r}"
            else:
                if uid < 0:
                    reason = f"negative uid {uid}"
                elif item < 1:
                    reason = f"item_id must be >= 1 (0 is padding), got {item}"
        if reason is not None:
            if strict:
                raise DataError(f"{name}:{lineno}: {reason}")
            skipped += 1
            continue
        rows.append((uid, item, order))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3), skipped


def read_train(path: PathLike, *, strict: bool = True) -> TrainData:
    """Read ``uid,item_id,order`` rows from a file or a directory of files into ``user -> items``.

    A user's items are sorted by ``order`` (stable, so equal orders keep file order). With
    ``strict`` the first malformed line raises :class:`DataError`; otherwise it is skipped and
    counted in ``result.skipped``.
    """
    parts: list[np.ndarray] = []
    skipped = 0
    for f in _files(path):
        data = f.read_bytes()
        rows = _parse_train_fast(data)
        if rows is None:
            rows, n_bad = _parse_train_slow(data, str(f), strict)
            skipped += n_bad
        parts.append(rows)
    rows = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    out = TrainData()
    out.skipped = skipped
    if not rows.size:
        return out
    du, do = np.diff(rows[:, 0]), np.diff(rows[:, 2])
    if np.all((du > 0) | ((du == 0) & (do >= 0))):
        uids, items = rows[:, 0], rows[:, 1]  # already grouped and ordered (the usual case)
    else:
        order = np.lexsort((rows[:, 2], rows[:, 0]))  # by uid, then order; stable
        uids, items = rows[order, 0], rows[order, 1]
    starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
    for uid, seq in zip(uids[starts].tolist(), np.split(items, starts[1:]), strict=True):
        out[uid] = seq
    return out


def _parse_eval_line(line: str) -> EvalUser:
    """One eval line; raises ValueError with the reason."""
    user_id: int | None = None
    hist: list[int] = []
    evals: list[int] = []
    for tok in line.split():
        key, sep, val = tok.partition(":")
        if not sep:
            raise ValueError(f"token {tok[:40]!r} is not key:value")
        try:
            v = int(val)
        except ValueError:
            raise ValueError(f"not an integer in {tok[:40]!r}") from None
        if key == "hist_item" or key == "eval_item":
            if v < 1:
                raise ValueError(f"{key} must be >= 1 (0 is padding), got {v}")
            (hist if key == "hist_item" else evals).append(v)
        elif key == "user_id":
            if user_id is not None:
                raise ValueError("user_id given twice")
            user_id = v
        elif key != "target_item":
            raise ValueError(f"unknown key {key[:40]!r}")
    if user_id is None:
        raise ValueError("no user_id")
    if not hist:
        raise ValueError("no hist_item")
    if not evals:
        raise ValueError("no eval_item")
    # Recall divides by the number of distinct eval items; keep first occurrences in file order.
    ev = np.asarray(evals, dtype=np.int64)
    _, first = np.unique(ev, return_index=True)
    return EvalUser(user_id, np.asarray(hist, dtype=np.int64), ev[np.sort(first)])


def read_eval(path: PathLike, *, strict: bool = True) -> EvalData:
    """Read ComiRec eval lines from a file or a directory of files.

    Every line needs a ``user_id``, at least one ``hist_item`` and one ``eval_item``; item ids are
    >= 1; ``target_item`` is accepted and ignored (ComiRec writes 0 there). Duplicate eval items are
    dropped (Recall divides by the number of distinct ones).
    """
    out = EvalData()
    for f in _files(path):
        with open(f, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(_parse_eval_line(line))
                except ValueError as e:
                    if strict:
                        raise DataError(f"{f}:{lineno}: {e}") from None
                    out.skipped += 1
    return out


def pad_histories(histories: Sequence[np.ndarray], maxlen: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad with 0 to ``[B, maxlen]`` keeping each history's LAST ``maxlen`` items.

    Returns ``(hist int64 [B, maxlen], length int64 [B])``.
    """
    if maxlen <= 0:
        raise ValueError(f"maxlen must be positive, got {maxlen}")
    b = len(histories)
    hist = np.zeros((b, maxlen), dtype=np.int64)
    length = np.zeros(b, dtype=np.int64)
    for i, h in enumerate(histories):
        tail = np.asarray(h, dtype=np.int64)[-maxlen:]
        hist[i, : tail.size] = tail
        length[i] = tail.size
    return hist, length


def item_popularity(user_seqs: dict[int, np.ndarray], item_count: int) -> np.ndarray:
    """Click count per item id, ``int64 [item_count]`` (index 0, padding, stays 0)."""
    counts = np.zeros(item_count, dtype=np.int64)
    if not user_seqs:
        return counts
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in user_seqs.values()])
    if items.size and (items.min() < 0 or items.max() >= item_count):
        raise ValueError(f"item ids must lie in [0, {item_count}); got {items.min()}..{items.max()}")
    return np.bincount(items, minlength=item_count).astype(np.int64)


class TrainSamples:
    """ComiRec training samples: a uniformly random user (among those with >= 5 clicks), a uniformly
    random target position >= 4 in its sequence, history = the previous <= ``maxlen`` items.

    One ``np.random.Generator`` is created from ``seed`` in the constructor and used for every
    batch of every epoch: reseeding per user or per epoch would replay the same samples.
    """

    def __init__(
        self, user_seqs: dict[int, np.ndarray], maxlen: int, batch_size: int, seed: int = 0
    ) -> None:
        if maxlen <= 0 or batch_size <= 0:
            raise ValueError(f"maxlen and batch_size must be positive, got {maxlen}, {batch_size}")
        self.maxlen = int(maxlen)
        self.batch_size = int(batch_size)
        seqs = [np.asarray(s, dtype=np.int64) for s in user_seqs.values() if len(s) > _MIN_PREV]
        if not seqs:
            raise ValueError(f"no user has more than {_MIN_PREV} clicks: nothing to train on")
        lengths = np.array([s.size for s in seqs], dtype=np.int64)
        self._flat = np.concatenate(seqs)
        self._offsets = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
        self._n_pos = lengths - _MIN_PREV  # usable target positions per user
        self.users = len(seqs)
        self.samples_per_epoch = int(self._n_pos.sum())
        self.rng = np.random.default_rng(seed)
        self._cols = np.arange(self.maxlen, dtype=np.int64)

    def batches_per_epoch(self) -> int:
        return -(-self.samples_per_epoch // self.batch_size)

    def sample(self, size: int) -> Batch:
        """``size`` samples drawn with the shared generator (vectorised)."""
        u = self.rng.integers(0, self.users, size=size)
        pos = _MIN_PREV + (self.rng.random(size) * self._n_pos[u]).astype(np.int64)
        length = np.minimum(pos, self.maxlen)
        start = self._offsets[u] + pos - length
        idx = start[:, None] + self._cols[None, :]
        mask = self._cols[None, :] < length[:, None]
        hist = np.where(mask, self._flat[np.where(mask, idx, 0)], 0)
        target = self._flat[self._offsets[u] + pos]
        return Batch(hist, length, target)

    def batches(self, n_batches: int | None = None) -> Iterator[Batch]:
        """``n_batches`` batches (default: one epoch, ``ceil(samples_per_epoch / batch_size)``)."""
        n = self.batches_per_epoch() if n_batches is None or n_batches <= 0 else int(n_batches)
        for _ in range(n):
            yield self.sample(self.batch_size)

    def state(self) -> dict:
        """Generator state, so a resumed run continues the sample stream instead of replaying it."""
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
