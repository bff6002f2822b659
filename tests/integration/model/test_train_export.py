"""Train on generated data, evaluate against most-popular, export, and load the tower the way the
worker does: its outputs must equal the training network's for the same histories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from cli import main as cli
from mind_recall.settings import Settings, load
from model.data import pad_histories, read_eval
from model.export import export_checkpoint
from model.infer import run_evaluate
from model.synth import write_dataset
from model.tower import ExportError, UserTower, load_items, load_popular
from model.trainer import checkpoints, load_network, train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, users=2000, items=1000, seed=11)
    return out


def _settings(data_dir: Path, save: Path, *extra: str) -> Settings:
    return load(None, overrides=[
        f"runner.train_data_dir={data_dir / 'train'}", f"runner.test_data_dir={data_dir / 'valid'}",
        f"runner.model_save_path={save}", "runner.progress=false", "runner.epochs=2",
        "runner.batches_per_epoch=150", "hyper_parameters.neg_samples=200", "runner.seed=5", *extra,
    ], env={})


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = _settings(data_dir, tmp_path_factory.mktemp("ckpt") / "mind")
    last = train(s)
    assert [p.name for p in checkpoints(s.runner.model_save_path)] == ["0", "1"] and last.name == "1"
    return s


def test_mind_beats_most_popular(trained: Settings, tmp_path: Path) -> None:
    mind = run_evaluate(trained, 50, json_out=str(tmp_path / "mind.json"))
    pop = run_evaluate(trained, 50, baseline="most_popular")
    assert json.loads((tmp_path / "mind.json").read_text())["recall@50"] == mind["recall@50"]
    assert (mind["method"], pop["method"]) == ("mind", "most_popular")
    assert mind["users"] == pop["users"] == 200
    # Planted multi-interest data: MIND must find the interests, most-popular cannot.
    assert mind["recall@50"] > 2 * pop["recall@50"], (mind, pop)
    assert mind["hitrate@50"] > pop["hitrate@50"]
    # As served (seen items neither ranked nor counted): the CLI's --exclude-seen, on the same checkpoint.
    served = run_evaluate(trained, 50, exclude_seen=True)
    assert served["exclude_seen"] is True and mind["exclude_seen"] is False
    assert served["users"] + served["users_all_seen"] == 200
    assert served["recall@50"] > 2 * pop["recall@50"], served


def test_export_and_tower_match_training_network(trained: Settings, tmp_path: Path) -> None:
    out = tmp_path / "export"
    manifest = export_checkpoint(trained, out)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert len(manifest["model_version"]) == 12 and int(manifest["model_version"], 16) >= 0
    k = trained.hyper_parameters.capsual_max_k
    assert (manifest["model"], manifest["dim"], manifest["k"], manifest["maxlen"]) == ("mind", 64, k, 20)
    assert manifest["item_count"] == 1001 and manifest["n_items"] == 1000 and manifest["dynamic_k"] is False
    assert isinstance(manifest["created_ts"], int)
    assert (out / "user_tower.pdiparams").stat().st_size < 100_000  # the tower alone, no item table

    net, _ = load_network(checkpoints(trained.runner.model_save_path)[-1])
    # The default tower has trained recency weights, so the parity below covers them too.
    assert np.abs(net.tower.recency.log_w.numpy()).max() > 1e-4
    ids, vectors = load_items(out)
    assert ids.tolist() == list(range(1, 1001)) and vectors.shape == (1000, 64)
    # What is exported and searched: the co-occurrence-mixed vectors (the default), not the raw rows.
    np.testing.assert_array_equal(vectors, net.item_vectors())
    assert trained.hyper_parameters.cooc_neighbors > 0
    assert not np.allclose(vectors, net.item_emb.weight.numpy()[1:])
    popular = load_popular(out)
    assert 0 not in popular and len(set(popular.tolist())) == popular.size

    users = read_eval(Path(trained.runner.test_data_dir))[:64]
    hist, lengths = pad_histories([u.hist for u in users], 20)
    with paddle.no_grad():
        ref, ref_n = net.encode_ids(paddle.to_tensor(hist), paddle.to_tensor(lengths))
    table = np.vstack([np.zeros((1, 64), np.float32), vectors])  # row 0: padding, as the worker pads
    for engine in ("inference", "jit"):
        tower = UserTower.load(out, engine=engine)
        assert tower.engine_name.startswith("paddle_inference" if engine == "inference" else "paddle_jit")
        assert tower.model_version == manifest["model_version"]
        assert (tower.dim, tower.k, tower.maxlen) == (64, k, 20)
        got, got_n = tower.encode(table[hist], lengths)
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got_n, ref_n.numpy())
        short, _ = tower.encode(table[hist][:, :12], np.minimum(lengths, 12))  # L < maxlen is padded
        assert short.shape == got.shape

    # Same checkpoint -> same version; another epoch -> another version.
    assert export_checkpoint(trained, tmp_path / "again")["model_version"] == manifest["model_version"]
    assert export_checkpoint(trained, tmp_path / "e0", epoch=0)["model_version"] != manifest["model_version"]

    # A tower that does not reproduce the training network is refused, whatever the engine.
    with np.load(out / "probe.npz") as z:
        probe = {k: z[k] for k in z.files}
    probe["interests"] = probe["interests"] + 0.1
    np.savez(out / "probe.npz", **probe)
    with pytest.raises(ExportError, match="probe"):
        UserTower.load(out)


def test_resume_reproduces_an_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    small = ["runner.batches_per_epoch=15", "hyper_parameters.resample_routing=true", "runner.keep_checkpoints=1"]
    full = _settings(data_dir, tmp_path / "full", *small)
    train(full)
    part = _settings(data_dir, tmp_path / "part", *small, "runner.epochs=1")
    train(part)
    assert [p.name for p in checkpoints(tmp_path / "part")] == ["0"]
    last = train(part.replace("runner.epochs=2", "runner.resume=true"))
    assert last.name == "1"
    assert [p.name for p in checkpoints(tmp_path / "full")] == ["1"]  # keep_checkpoints=1
    a = paddle.load(str(tmp_path / "full" / "1" / "model.pdparams"))
    b = paddle.load(str(last / "model.pdparams"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("extra", [
    ["hyper_parameters.model=single_vector", "hyper_parameters.relu_layer=true"],
    ["hyper_parameters.dynamic_k=true", "hyper_parameters.relu_layer=true", "hyper_parameters.pow_p=2"],
    ["hyper_parameters.sparse_embedding=false"],
    ["hyper_parameters.model=comirec_sa", "hyper_parameters.routing_reg=100", "hyper_parameters.hard_neg_beta=5"],
    ["hyper_parameters.routing_per_sample=true", "hyper_parameters.routing_reg=100",
     "hyper_parameters.bilinear=per_interest", "hyper_parameters.capsual_max_k=2"],
    ["hyper_parameters.global_interest=true", "hyper_parameters.bilinear_init=normal",
     "hyper_parameters.bilinear=shared"],
    ["hyper_parameters.recency=false"],
    ["hyper_parameters.model=single_vector", "hyper_parameters.recency=true"],
    ["hyper_parameters.cooc_neighbors=5", "hyper_parameters.cooc_window=2"],
    ["hyper_parameters.cooc_neighbors=5", "hyper_parameters.cooc_learned=true"],
    ["hyper_parameters.cooc_neighbors=0"],  # plain item vectors (the default is co-occurrence vectors)
])
def test_options_train_evaluate_export(data_dir: Path, tmp_path: Path, extra: list[str]) -> None:
    s = _settings(data_dir, tmp_path / "ckpt", "runner.epochs=1", "runner.batches_per_epoch=20", *extra)
    opts = [a for o in _overrides(s) for a in ("-o", o)]
    assert cli.main(["train", *opts]) == 0
    result = run_evaluate(s, 20)
    assert set(result) >= {"method", "recall@20", "ndcg@20", "hitrate@20", "users"}
    assert result["method"] == s.hyper_parameters.model
    out = tmp_path / "export"
    assert cli.main(["export", "--out", str(out), *opts]) == 0
    tower = UserTower.load(out)
    assert tower.engine_name == "paddle_inference"  # reproduced the probe, no fallback to jit.load
    _, vectors = load_items(out)
    interests, n = tower.encode(vectors[None, :5], np.array([5]))
    assert interests.shape == (1, tower.k, tower.dim)
    expected_n = 2 if s.hyper_parameters.dynamic_k else tower.k  # floor(log2 5) = 2
    assert n.tolist() == [expected_n]


def test_early_stopping_keeps_the_best_epoch(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.trainer as trainer

    scores = iter([0.30, 0.35, 0.34, 0.33, 0.99])  # best at epoch 1, then two worse epochs
    seen: list[int] = []

    def fake_recall(net: object, users: list, batch_size: int) -> float:
        seen.append(len(users))
        return next(scores)

    monkeypatch.setattr(trainer, "valid_recall_at_50", fake_recall)
    s = _settings(data_dir, tmp_path / "es", "runner.epochs=5", "runner.batches_per_epoch=5",
                  "runner.early_stop_patience=2", "runner.keep_checkpoints=1",
                  f"runner.valid_data_dir={data_dir / 'valid'}")
    last = train(s)
    assert len(seen) == 4  # stopped after epoch 3: two epochs without a better Recall@50
    assert seen[0] == len(read_eval(data_dir / "valid"))
    assert last.name == "1" and [p.name for p in checkpoints(tmp_path / "es")] == ["1"]
    meta = json.loads((last / "meta.json").read_text())
    assert meta["valid_recall@50"] == 0.35 and meta["best"] == {"epoch": 1, "recall@50": 0.35}


def test_early_stopping_real_validation_recall(data_dir: Path, tmp_path: Path) -> None:
    s = _settings(data_dir, tmp_path / "es", "runner.epochs=2", "runner.batches_per_epoch=30",
                  "runner.early_stop_patience=1")
    last = train(s)
    meta = json.loads((last / "meta.json").read_text())
    # The recorded validation Recall@50 is what evaluate reports for that checkpoint.
    assert run_evaluate(s, 50, epoch=int(last.name))["recall@50"] == pytest.approx(meta["valid_recall@50"])
    assert meta["best"]["epoch"] == int(last.name)


def _overrides(s: Settings) -> list[str]:
    r, hp = s.runner, s.hyper_parameters
    return [
        f"runner.train_data_dir={r.train_data_dir}", f"runner.test_data_dir={r.test_data_dir}",
        f"runner.model_save_path={r.model_save_path}", "runner.progress=false", f"runner.epochs={r.epochs}",
        f"runner.batches_per_epoch={r.batches_per_epoch}", f"hyper_parameters.neg_samples={hp.neg_samples}",
        f"hyper_parameters.model={hp.model}", f"hyper_parameters.dynamic_k={hp.dynamic_k}",
        f"hyper_parameters.relu_layer={hp.relu_layer}", f"hyper_parameters.pow_p={hp.pow_p}",
        f"hyper_parameters.sparse_embedding={hp.sparse_embedding}",
        f"hyper_parameters.routing_reg={hp.routing_reg}", f"hyper_parameters.hard_neg_beta={hp.hard_neg_beta}",
        f"hyper_parameters.routing_per_sample={hp.routing_per_sample}", f"hyper_parameters.bilinear={hp.bilinear}",
        f"hyper_parameters.capsual_max_k={hp.capsual_max_k}", f"hyper_parameters.bilinear_init={hp.bilinear_init}",
        f"hyper_parameters.global_interest={hp.global_interest}", f"hyper_parameters.recency={hp.recency}",
        f"hyper_parameters.cooc_neighbors={hp.cooc_neighbors}", f"hyper_parameters.cooc_window={hp.cooc_window}",
        f"hyper_parameters.cooc_learned={hp.cooc_learned}",
    ]


def test_evaluate_cli_json_and_milvus_index(trained: Settings, tmp_path: Path, milvus_uri: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    base = ["-o", f"runner.model_save_path={trained.runner.model_save_path}",
            "-o", f"runner.test_data_dir={trained.runner.test_data_dir}",
            "-o", f"runner.train_data_dir={trained.runner.train_data_dir}", "-o", f"milvus.uri={milvus_uri}"]
    assert cli.main(["evaluate", *base, "--top-n", "30", "--json", str(tmp_path / "exact.json")]) == 0
    mv_args = ["--top-n", "30", "--index", "milvus", "--json", str(tmp_path / "mv.json")]
    assert cli.main(["evaluate", *base, *mv_args]) == 0
    exact, mv = (json.loads((tmp_path / f).read_text()) for f in ("exact.json", "mv.json"))
    assert {"method", "recall@30", "ndcg@30", "hitrate@30", "users"} <= set(exact)
    # A FLAT Milvus index returns what the exact search returns.
    assert mv["recall@30"] == pytest.approx(exact["recall@30"], abs=1e-9)
    assert mv["index"] == "milvus"
    assert cli.main(["evaluate", *base, "--epoch", "7"]) == 2
    assert "no checkpoint for epoch 7" in capsys.readouterr().err


def test_checkpoint_from_before_recency_and_bilinear_loads_as_it_was(data_dir: Path, tmp_path: Path) -> None:
    s = _settings(data_dir, tmp_path / "ckpt", "runner.epochs=1", "runner.batches_per_epoch=5",
                  "hyper_parameters.recency=false", "hyper_parameters.bilinear=shared")
    opts = [a for o in _overrides(s) for a in ("-o", o)]
    assert cli.main(["train", *opts]) == 0
    ckpt = checkpoints(s.runner.model_save_path)[-1]
    meta = json.loads((ckpt / "meta.json").read_text())
    # What a checkpoint written before the options holds: no recency weights, one shared map.
    del meta["net"]["recency"], meta["net"]["bilinear"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    net, _ = load_network(ckpt)
    assert net.cfg.recency is False and net.tower.recency is None
    assert net.cfg.bilinear == "shared" and tuple(net.tower.bilinear.shape) == (s.hyper_parameters.embedding_dim,) * 2
