"""Public-dataset converter (model/datasets.py) and `mind-recall data fetch`: ComiRec split by user."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from model.data import DataError, read_eval, read_train
from model.datasets import convert, eval_line, read_sequences, split_users


def _write_seqs(path: Path, n_users: int, seed: int = 0, first_uid: int = 1) -> dict[int, list[int]]:
    rng = np.random.default_rng(seed)
    seqs = {u: rng.integers(1, 60, size=int(rng.integers(2, 15))).tolist()
            for u in range(first_uid, first_uid + n_users)}
    path.write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in seqs.items()))
    return seqs


def test_single_file_split_by_user(tmp_path: Path) -> None:
    seqs = _write_seqs(tmp_path / "Beauty.txt", 200)
    meta = convert("Beauty", tmp_path / "Beauty.txt", tmp_path / "out", seed=3)
    train = read_train(tmp_path / "out" / "train")
    valid, test = read_eval(tmp_path / "out" / "valid"), read_eval(tmp_path / "out" / "test")
    tu, vu, su = set(train), {u.user_id for u in valid}, {u.user_id for u in test}
    # 80/10/10, disjoint, every user somewhere.
    assert (len(tu), len(vu), len(su)) == (160, 20, 20)
    assert not (tu & vu or tu & su or vu & su) and tu | vu | su == set(seqs)
    # Train users keep every click, in order.
    for u in tu:
        assert train[u].tolist() == seqs[u]
    # Eval: history = first int(0.8 n) items, eval items = the rest (nothing truncated).
    for u in [*valid, *test]:
        s = seqs[u.user_id]
        k = int(len(s) * 0.8)
        assert u.hist.tolist() == s[:k]
        assert set(u.eval_items.tolist()) == set(s[k:])
    assert meta["train_users"] == 160 and meta["valid_users"] == meta["test_users"] == 20
    assert meta["train_clicks"] == sum(len(seqs[u]) for u in tu)
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["source_sha256"] == meta["source_sha256"]
    # The split depends on the seed, and only on it.
    convert("Beauty", tmp_path / "Beauty.txt", tmp_path / "again", seed=3)
    convert("Beauty", tmp_path / "Beauty.txt", tmp_path / "other", seed=4)
    same = (tmp_path / "out/valid/part-0").read_bytes() == (tmp_path / "again/valid/part-0").read_bytes()
    assert same
    assert (tmp_path / "out/valid/part-0").read_bytes() != (tmp_path / "other/valid/part-0").read_bytes()


def test_pre_split_directory_keeps_the_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    tr = _write_seqs(src / "Yelp_train.txt", 30, first_uid=1)
    va = _write_seqs(src / "Yelp_valid.txt", 5, seed=1, first_uid=100)
    te = _write_seqs(src / "Yelp_test.txt", 6, seed=2, first_uid=200)
    meta = convert("Yelp", src, tmp_path / "out")
    assert set(read_train(tmp_path / "out" / "train")) == set(tr)
    assert {u.user_id for u in read_eval(tmp_path / "out" / "valid")} == set(va)
    assert {u.user_id for u in read_eval(tmp_path / "out" / "test")} == set(te)
    assert meta["split"].startswith("pre-split")
    # A user in two splits would leak eval users into training.
    (src / "Yelp_test.txt").write_text("1 4 5 6\n")
    with pytest.raises(DataError, match="another split"):
        convert("Yelp", src, tmp_path / "bad")


def test_too_short_eval_users_are_counted_not_hidden(tmp_path: Path) -> None:
    assert eval_line(7, [3]) is None
    assert eval_line(7, [3, 4]) == "user_id:7 target_item:0 hist_item:3 eval_item:4\n"
    assert eval_line(7, [1, 2, 3, 4, 5]) == (
        "user_id:7 target_item:0 hist_item:1 hist_item:2 hist_item:3 hist_item:4 eval_item:5\n")
    src = tmp_path / "s"
    src.mkdir()
    (src / "train.txt").write_text("1 1 2 3 4 5 6\n")
    (src / "valid.txt").write_text("2 1 2 3\n3 4\n")
    (src / "test.txt").write_text("4 5 6\n")
    meta = convert("x", src, tmp_path / "out")
    assert (meta["valid_users"], meta["valid_users_too_short"]) == (1, 1)
    assert meta["valid_eval_items"] == 1 and meta["test_eval_items_unseen_in_train"] == 0


def test_bad_input_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "d.txt"
    f.write_text("1 2 3\n\n2 0 4\n")
    with pytest.raises(DataError, match=r"d.txt:3: item ids must be >= 1"):
        read_sequences(f)
    f.write_text("1 2 3\n1 4 5\n")
    with pytest.raises(DataError, match=r"d.txt:2: user 1 appears twice"):
        read_sequences(f)
    f.write_text("1 2 x\n")
    with pytest.raises(DataError, match=r"d.txt:1: not an integer"):
        read_sequences(f)
    with pytest.raises(ValueError, match="valid_frac"):
        split_users([1, 2, 3], 0, valid_frac=0.6, test_frac=0.5)
    with pytest.raises(FileNotFoundError, match="expected"):
        convert("Beauty", tmp_path, tmp_path / "out")


def test_data_fetch_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_seqs(tmp_path / "Toys.txt", 50)
    rc = main(["data", "fetch", "Toys", "--src", str(tmp_path / "Toys.txt"), "--out", str(tmp_path / "o"),
               "--seed", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train_users"] == 40 and out["valid_users"] == 5 and out["test_users"] == 5
    assert (tmp_path / "o" / "train" / "data.txt").exists()
    rc = main(["data", "fetch", "Toys", "--src", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o2")])
    assert rc == 2
    assert "mind-recall data fetch:" in capsys.readouterr().err
