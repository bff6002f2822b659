"""bench/quality.py --lr-grid: a model's learning rate is chosen on valid only, never on test."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def _quality() -> ModuleType:
    path = Path(__file__).resolve().parents[3] / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_picks_the_best_valid_run_even_when_its_test_is_lower() -> None:
    pick = _quality().pick_by_valid
    runs = {0.005: {"valid_recall@50": 0.15, "recall@50": 0.30},
            0.001: {"valid_recall@50": 0.17, "recall@50": 0.10}}
    assert pick(runs) == (0.001, runs[0.001])


def test_a_tie_on_valid_keeps_the_larger_rate() -> None:
    pick = _quality().pick_by_valid
    runs = {0.001: {"valid_recall@50": 0.2}, 0.005: {"valid_recall@50": 0.2}}
    assert pick(runs)[0] == 0.005


def test_runs_without_a_valid_score_are_not_chosen() -> None:
    pick = _quality().pick_by_valid
    runs = {0.005: {"valid_recall@50": None, "recall@50": 0.9}, 0.001: {"valid_recall@50": 0.1}}
    assert pick(runs)[0] == 0.001
    with pytest.raises(ValueError, match="valid_recall@50"):
        pick({0.005: {"recall@50": 0.9}})


def test_the_table_names_the_chosen_rates() -> None:
    q = _quality()
    cell = {"mean": 0.1, "std": 0.0, "runs": [0.1]}
    run = {f"{m}@{n}": cell for n in (20, 50) for m in ("recall", "ndcg", "hitrate")}
    run.update(epoch=cell, train_s=cell, learning_rate={"mean": 0.003, "std": 0.0, "runs": [0.005, 0.001]})
    mp = {f"{m}@{n}": 0.01 for n in (20, 50) for m in ("recall", "ndcg", "hitrate")}
    table = q.markdown_table({"single_vector": run, "most_popular": mp})
    assert "| single_vector (lr 0.005, 0.001) |" in table


def test_a_bad_grid_is_a_clear_argument_error() -> None:
    parse = _quality()._lr_grid
    assert parse("0.005,0.001") == [0.005, 0.001]
    for bad in ("abc", "0.005,0", "0.001,0.001", "-0.1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"learning rates|numbers"):
            parse(bad)


def test_the_baselines_are_what_the_docs_say() -> None:
    """single_vector is issue 14's plain mean pooling over plain item vectors; single_vector+cooc gets
    exactly the co-occurrence vectors the default MIND config gets (like for like)."""
    from mind_recall.settings import load

    models = _quality().MODELS

    def hp(name: str) -> object:
        return load(None, overrides=models[name], env={}).hyper_parameters

    default = load(None, env={}).hyper_parameters
    assert default.model == "mind" and default.cooc_neighbors > 0
    plain, cooc = hp("single_vector"), hp("single_vector+cooc")
    assert (plain.model, plain.recency, plain.cooc_neighbors) == ("single_vector", "false", 0)
    assert (cooc.model, cooc.recency) == ("single_vector", "false")
    assert (cooc.cooc_neighbors, cooc.cooc_window, cooc.cooc_learned) == (
        default.cooc_neighbors, default.cooc_window, default.cooc_learned)
