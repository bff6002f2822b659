"""Readers, padding, popularity and ComiRec training samples (model/data.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.data import (
    DataError,
    TrainSamples,
    item_popularity,
    pad_histories,
    read_eval,
    read_train,
)
from model.synth import write_dataset


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- read_train


def test_read_train_groups_by_user_and_sorts_by_order(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.txt", "2,30,1\n1,10,2\n1,11,0\n2,31,0\n1,12,1\n")
    seqs = read_train(f)
    assert sorted(seqs) == [1, 2]
    assert seqs[1].tolist() == [11, 12, 10]
    assert seqs[2].tolist() == [31, 30]
    assert seqs[1].dtype == np.int64
    assert seqs.skipped == 0


def test_read_train_header_crlf_and_no_trailing_newline(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.txt", "uid,item_id,order\r\n5,7,0\r\n5,8,1")
    assert read_train(f)[5].tolist() == [7, 8]


def test_read_train_directory_reads_all_files_sorted(tmp_path: Path) -> None:
    _write(tmp_path / "d" / "b.txt", "1,20,1\n")
    _write(tmp_path / "d" / "a.txt", "1,10,0\n2,5,0\n")
    _write(tmp_path / "d" / ".hidden", "garbage\n")
    seqs = read_train(tmp_path / "d")
    assert seqs[1].tolist() == [10, 20]
    assert seqs[2].tolist() == [5]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("1,2\n", "expected 3"),
        ("1,2,3,4\n", "expected 3"),
        ("1,x,3\n", "not an integer"),
        ("1,0,3\n", "item_id must be >= 1"),
        ("-1,5,3\n", "negative uid"),
        ("1,,3\n", "not an integer"),
        ("1 2,5,3\n", "not an integer"),
    ],
)
def test_read_train_strict_reports_file_and_line(tmp_path: Path, bad: str, reason: str) -> None:
    f = _write(tmp_path / "t.txt", "1,10,0\n1,11,1\n" + bad + "1,12,2\n")
    with pytest.raises(DataError) as e:
        read_train(f)
    assert str(e.value).startswith(f"{f}:3: ")
    assert reason in str(e.value)


def test_read_train_lenient_skips_and_counts(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.txt", "1,10,0\nbad line\n1,11,1\n\n1,0,2\n2,3\n2,4,0\n")
    seqs = read_train(f, strict=False)
    assert seqs.skipped == 3  # the blank line is not an error
    assert seqs[1].tolist() == [10, 11]
    assert seqs[2].tolist() == [4]


def test_read_train_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_train(tmp_path / "nope.txt")


def test_read_train_matches_slow_parse_on_synth(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "s", users=300, items=200, seed=1)
    seqs = read_train(tmp_path / "s" / "train")
    assert seqs.keys() == ds.train_seqs.keys()
    for u, s in ds.train_seqs.items():
        np.testing.assert_array_equal(seqs[u], s)


# ---------------------------------------------------------------- read_eval


def test_read_eval_parses_hist_in_order_and_dedupes_eval(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "v",
        "user_id:7 target_item:0 hist_item:3 hist_item:1 hist_item:3 eval_item:9 eval_item:4 eval_item:9\n"
        "\n"
        "user_id:8 hist_item:2 eval_item:5\n",
    )
    users = read_eval(f)
    assert [u.user_id for u in users] == [7, 8]
    assert users[0].hist.tolist() == [3, 1, 3]
    assert users[0].eval_items.tolist() == [9, 4]
    assert users[1].hist.dtype == np.int64


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("hist_item:1 eval_item:2", "no user_id"),
        ("user_id:1 eval_item:2", "no hist_item"),
        ("user_id:1 hist_item:2", "no eval_item"),
        ("user_id:1 hist_item:x eval_item:2", "not an integer"),
        ("user_id:1 hist_item:0 eval_item:2", "must be >= 1"),
        ("user_id:1 color:3 hist_item:1 eval_item:2", "unknown key"),
        ("user_id:1 hist_item 1 eval_item:2", "not key:value"),
        ("user_id:1 user_id:2 hist_item:1 eval_item:2", "twice"),
    ],
)
def test_read_eval_strict_errors(tmp_path: Path, line: str, reason: str) -> None:
    f = _write(tmp_path / "v", "user_id:9 hist_item:1 eval_item:2\n" + line + "\n")
    with pytest.raises(DataError) as e:
        read_eval(f)
    assert str(e.value).startswith(f"{f}:2: ")
    assert reason in str(e.value)


def test_read_eval_lenient_and_directory(tmp_path: Path) -> None:
    _write(tmp_path / "v" / "part-1", "user_id:2 hist_item:1 eval_item:3\nnonsense\n")
    _write(tmp_path / "v" / "part-0", "user_id:1 hist_item:1 eval_item:2\n")
    users = read_eval(tmp_path / "v", strict=False)
    assert [u.user_id for u in users] == [1, 2]
    assert users.skipped == 1


# ---------------------------------------------------------------- padding, popularity


def test_pad_histories_keeps_last_items_and_pads_right() -> None:
    hist, length = pad_histories([np.array([1, 2, 3, 4, 5]), np.array([7]), [8, 9]], 3)
    assert hist.tolist() == [[3, 4, 5], [7, 0, 0], [8, 9, 0]]
    assert length.tolist() == [3, 1, 2]
    assert hist.dtype == np.int64 and length.dtype == np.int64


def test_item_popularity_counts_and_bounds() -> None:
    seqs = {1: np.array([1, 2, 2]), 2: np.array([2, 4])}
    assert item_popularity(seqs, 5).tolist() == [0, 1, 3, 0, 1]
    with pytest.raises(ValueError):
        item_popularity(seqs, 4)


# ---------------------------------------------------------------- TrainSamples


def test_train_samples_follow_comirec_rule() -> None:
    # Item ids encode (user, position): user u's item at position p is 1000*u + p + 1.
    seqs = {u: np.arange(n, dtype=np.int64) + 1000 * u + 1 for u, n in [(1, 30), (2, 6), (3, 4), (4, 12)]}
    ts = TrainSamples(seqs, maxlen=8, batch_size=64, seed=3)
    assert ts.samples_per_epoch == (30 - 4) + (6 - 4) + (12 - 4)  # user 3 is too short
    assert ts.batches_per_epoch() == -(-36 // 64)
    for b in ts.batches(20):
        assert b.hist.shape == (64, 8) and b.length.shape == (64,) and b.target.shape == (64,)
        for h, n, t in zip(b.hist, b.length, b.target, strict=True):
            u, pos = divmod(int(t) - 1, 1000)
            assert u in (1, 2, 4) and pos >= 4
            assert n == min(pos, 8)
            expect = np.arange(pos - n, pos) + 1000 * u + 1
            assert h[:n].tolist() == expect.tolist()
            assert not h[n:].any()


def test_train_samples_generator_never_reseeded() -> None:
    rng = np.random.default_rng(0)
    seqs = {u: rng.integers(1, 10_000, size=int(rng.integers(5, 60))) for u in range(500)}
    ts = TrainSamples(seqs, maxlen=20, batch_size=128, seed=11)
    epoch1 = np.concatenate([b.target for b in ts.batches(5)])
    epoch2 = np.concatenate([b.target for b in ts.batches(5)])
    assert not np.array_equal(epoch1, epoch2)
    # Same seed -> same stream (reproducible), and the stream covers many distinct samples.
    again = TrainSamples(seqs, maxlen=20, batch_size=128, seed=11)
    np.testing.assert_array_equal(np.concatenate([b.target for b in again.batches(5)]), epoch1)
    seen = set()
    for b in ts.batches(300):
        seen.update(zip(b.hist[:, 0].tolist(), b.length.tolist(), b.target.tolist(), strict=True))
    # 38.4k draws over ~13k (user, position) pairs: a reseeded generator would give ~128 distinct.
    assert len(seen) > 0.8 * ts.samples_per_epoch


def test_train_samples_state_resumes_stream() -> None:
    seqs = {u: np.arange(1, 40) + u for u in range(50)}
    ts = TrainSamples(seqs, maxlen=10, batch_size=16, seed=5)
    next(iter(ts.batches(1)))
    state = ts.state()
    a = ts.sample(16)
    ts2 = TrainSamples(seqs, maxlen=10, batch_size=16, seed=99)
    ts2.set_state(state)
    np.testing.assert_array_equal(ts2.sample(16).hist, a.hist)


def test_train_samples_rejects_too_short_data() -> None:
    with pytest.raises(ValueError, match="nothing to train"):
        TrainSamples({1: np.arange(1, 5)}, maxlen=5, batch_size=4, seed=0)
