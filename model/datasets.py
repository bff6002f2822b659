"""Public sequential-recommendation datasets -> the project's ComiRec-format train/valid/test.

Input: one user per line, ``uid item item ...`` with the items in time order (space separated), as in
``salesforce/ICLRec`` ``data/{Beauty,Sports_and_Outdoors,Toys_and_Games,Yelp}.txt`` (all users in one
file) and ``yaokunliu/SimRec`` ``data/{Beauty,Retailrocket,Yelp}/NAME_{train,valid,test}.txt`` (already
split by user). The data is never bundled: ``mind-recall data fetch NAME --src PATH --out DIR`` reads a
local copy.

Split (ComiRec, by user): the users of a single file are shuffled with ``seed`` and cut 80/10/10 into
train / valid / test users; a pre-split source keeps its own split. Train users go to
``OUT/train/data.txt`` as ``uid,item_id,order`` rows (every click); each valid/test user becomes one
eval line whose history is the first ``int(0.8 * len)`` items and whose eval items are the rest
(nothing truncated). Eval users are never training users. Item ids are kept (they must be >= 1;
0 is padding).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from model.data import DataError

PathLike = str | os.PathLike[str]

SPLITS = ("train", "valid", "test")
HIST_FRAC = 0.8  # ComiRec: the first 80 % of an eval user's sequence is its history


def read_sequences(path: PathLike) -> dict[int, list[int]]:
    """``uid item item ...`` lines -> ``uid -> items`` (file order = time order). A uid given twice,
    an item id < 1 or a non-integer is a :class:`DataError` naming ``FILE:LINE``; blank lines are
    skipped."""
    out: dict[int, list[int]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                nums = [int(x) for x in parts]
            except ValueError:
                raise DataError(f"{path}:{lineno}: not an integer in {line.strip()[:80]!r}") from None
            uid, items = nums[0], nums[1:]
            if uid < 0:
                raise DataError(f"{path}:{lineno}: negative uid {uid}")
            if uid in out:
                raise DataError(f"{path}:{lineno}: user {uid} appears twice")
            if items and min(items) < 1:
                raise DataError(f"{path}:{lineno}: item ids must be >= 1 (0 is padding), got {min(items)}")
            out[uid] = items
    return out


def split_users(
    uids: Iterable[int], seed: int, valid_frac: float = 0.1, test_frac: float = 0.1
) -> dict[str, list[int]]:
    """Shuffle the users with ``seed`` and cut them into train / valid / test (ComiRec: 8:1:1)."""
    if not (0 < valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError(f"valid_frac and test_frac must be in (0, 1) with a sum < 1: {valid_frac}, {test_frac}")
    users = np.array(sorted(uids), dtype=np.int64)
    np.random.default_rng(seed).shuffle(users)
    n_valid = round(len(users) * valid_frac)
    n_test = round(len(users) * test_frac)
    valid, test = users[:n_valid], users[n_valid : n_valid + n_test]
    train = users[n_valid + n_test :]
    return {"train": sorted(train.tolist()), "valid": sorted(valid.tolist()), "test": sorted(test.tolist())}


def eval_line(uid: int, items: list[int]) -> str | None:
    """One ComiRec eval line (history = first ``int(0.8 len)``, eval = the rest), or None when the
    sequence is too short to have both (fewer than 2 items)."""
    k = int(len(items) * HIST_FRAC)
    if k < 1 or k >= len(items):
        return None
    hist = " ".join(f"hist_item:{i}" for i in items[:k])
    ev = " ".join(f"eval_item:{i}" for i in items[k:])
    return f"user_id:{uid} target_item:0 {hist} {ev}\n"


def _source_files(name: str, src: Path) -> dict[str, Path] | Path:
    """A single all-users file, or ``{split: file}`` of a pre-split directory (``NAME_train.txt`` ...,
    or ``train.txt`` ...)."""
    if src.is_file():
        return src
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    found: dict[str, Path] = {}
    for split in SPLITS:
        for cand in (f"{name}_{split}.txt", f"{split}.txt"):
            matches = [p for p in src.iterdir() if p.name.lower() == cand.lower()]
            if matches:
                found[split] = matches[0]
                break
    if set(found) != set(SPLITS):
        raise FileNotFoundError(
            f"{src}: expected {name}_train.txt, {name}_valid.txt and {name}_test.txt (or train/valid/test.txt); "
            f"found {sorted(p.name for p in src.iterdir())}"
        )
    return found


def _sha256(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def convert(
    name: str, src: PathLike, out: PathLike, *, seed: int = 0, valid_frac: float = 0.1, test_frac: float = 0.1
) -> dict[str, Any]:
    """Write ``OUT/train/data.txt``, ``OUT/valid/part-0``, ``OUT/test/part-0`` and ``OUT/meta.json``;
    returns the meta (counts per split, source checksum, split rule)."""
    src_p, out_p = Path(src), Path(out)
    files = _source_files(name, src_p)
    if isinstance(files, Path):
        seqs = read_sequences(files)
        groups = split_users(seqs, seed, valid_frac, test_frac)
        split_rule = f"users shuffled with seed {seed}, {1 - valid_frac - test_frac:.2f}/{valid_frac}/{test_frac}"
        sources = [files]
    else:
        seqs = {}
        groups = {}
        for split in SPLITS:
            part = read_sequences(files[split])
            clash = set(part) & set(seqs)
            if clash:
                raise DataError(f"{files[split]}: users also in another split, e.g. {min(clash)}")
            seqs.update(part)
            groups[split] = sorted(part)
        split_rule = "pre-split by the source (kept)"
        sources = [files[s] for s in SPLITS]
    meta: dict[str, Any] = {
        "name": name, "source": [str(p) for p in sources], "source_sha256": _sha256(sources),
        "split": split_rule, "hist_frac": HIST_FRAC,
    }
    for d in SPLITS:
        (out_p / d).mkdir(parents=True, exist_ok=True)
    train_rows = 0
    with open(out_p / "train" / "data.txt", "w", encoding="utf-8") as fh:
        for uid in groups["train"]:
            items = seqs[uid]
            fh.write("".join(f"{uid},{item},{i}\n" for i, item in enumerate(items)))
            train_rows += len(items)
    meta["train_users"] = len(groups["train"])
    meta["train_clicks"] = train_rows
    train_items = {i for uid in groups["train"] for i in seqs[uid]}
    meta["train_items"] = len(train_items)
    meta["max_item_id"] = max((max(s) for s in seqs.values() if s), default=0)
    for split in ("valid", "test"):
        kept = dropped = n_eval = n_unseen = 0
        with open(out_p / split / "part-0", "w", encoding="utf-8") as fh:
            for uid in groups[split]:
                line = eval_line(uid, seqs[uid])
                if line is None:
                    dropped += 1
                    continue
                fh.write(line)
                kept += 1
                k = int(len(seqs[uid]) * HIST_FRAC)
                n_eval += len(seqs[uid]) - k
                n_unseen += sum(1 for i in seqs[uid][k:] if i not in train_items)
        meta[f"{split}_users"] = kept
        meta[f"{split}_users_too_short"] = dropped
        meta[f"{split}_eval_items"] = n_eval
        meta[f"{split}_eval_items_unseen_in_train"] = n_unseen
    (out_p / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta
