"""Synthetic dataset generator (model/synth.py) and the `mind-recall data synth` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from model.data import read_eval, read_train
from model.evaluation import most_popular
from model.synth import write_dataset


def test_writes_readable_amazonbook_format(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path, users=400, items=300, seed=2)
    train = read_train(tmp_path / "train")
    evals = read_eval(tmp_path / "valid" / "part-0")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["users"] == 400 and meta["items"] == 300 and meta["seed"] == 2
    assert meta["clusters"] == ds.meta["clusters"] == 12
    assert len(train) == meta["train_users"] and len(evals) == meta["eval_users"] == 40
    # Eval users are distinct from train users (as in ComiRec).
    assert not set(train) & {u.user_id for u in evals}
    all_items = np.concatenate([*train.values(), *(u.hist for u in evals), *(u.eval_items for u in evals)])
    assert all_items.min() >= 1 and all_items.max() <= 300
    # Eval = the sequence after the history prefix.
    for (uid, hist, ev), u in zip(ds.eval_users, evals, strict=True):
        assert u.user_id == uid and u.hist.tolist() == hist.tolist()
        assert set(u.eval_items.tolist()) == set(ev.tolist())
    lens = np.array([len(s) for s in train.values()])
    assert lens.min() >= 10 and lens.max() <= 60


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", users=200, items=100, seed=5)
    write_dataset(tmp_path / "b", users=200, items=100, seed=5)
    write_dataset(tmp_path / "c", users=200, items=100, seed=6)
    for name in ("train/data.txt", "valid/part-0", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/train/data.txt").read_bytes() != (tmp_path / "c/train/data.txt").read_bytes()


def test_planted_multi_interest_structure(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path, users=2000, items=1000, seed=0, noise=0.05)
    ic = ds.item_cluster
    n_int = np.array([len(i) for i in ds.user_interests])
    assert n_int.min() == 2 and n_int.max() == 4
    inside = np.concatenate(
        [np.isin(ic[s], ds.user_interests[u]) for u, s in ds.train_seqs.items()]
    ).mean()
    assert 0.9 < inside < 0.99  # ~5% noise clicks fall outside (a few land inside by chance)
    # Users really mix interests: most train sequences touch >= 2 of their clusters.
    touched = [
        len(set(ic[s].tolist()) & set(ds.user_interests[u].tolist())) for u, s in ds.train_seqs.items()
    ]
    assert np.mean(np.array(touched) >= 2) > 0.9
    # Eval items come from the user's interests.
    ev_inside = np.concatenate([np.isin(ic[e], ds.user_interests[u]) for u, _, e in ds.eval_users]).mean()
    assert ev_inside > 0.9


def test_most_popular_is_weak_but_nonzero(tmp_path: Path) -> None:
    write_dataset(tmp_path, users=3000, items=1000, seed=1)
    train, evals = read_train(tmp_path / "train"), read_eval(tmp_path / "valid")
    mp = most_popular(train, 1001, 50, evals)
    # 50 of 1000 items cover 5% of the catalogue; popularity skew lifts that a little, not a lot.
    assert 0.03 < mp["recall@50"] < 0.3


def test_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_dataset(tmp_path, users=1, items=100, seed=0)
    with pytest.raises(ValueError):
        write_dataset(tmp_path, users=100, items=6, seed=0, clusters=3)  # 4 interests > 3 clusters


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = str(tmp_path / "d")
    rc = main(["data", "synth", "--out", out_dir, "--users", "300", "--items", "200", "--seed", "4"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["users"] == 300 and out["items"] == 200 and out["seed"] == 4
    assert (tmp_path / "d" / "train" / "data.txt").stat().st_size > 0
    assert len(read_eval(tmp_path / "d" / "valid")) == out["eval_users"]
