"""MIND network: routing ignores padding, squash keeps norms < 1, dynamic K, loss and baseline shapes."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.network import NetConfig, RecallNetwork, interest_count, squash

D, L, K = 8, 10, 4


def _net(**kw: object) -> RecallNetwork:
    paddle.seed(0)
    # The PaddleRec reference network (one shared random map, fixed routing logits); options via kw.
    base = {"item_count": 50, "embedding_dim": D, "hidden_size": D, "maxlen": L, "capsual_max_k": K,
            "bilinear": "shared", "routing_per_sample": False, "bilinear_init": "normal", "recency": False}
    cfg = NetConfig(**{**base, **kw})  # type: ignore[arg-type]
    net = RecallNetwork(cfg, routing_seed=1)
    net.eval()
    return net


def _encode(net: RecallNetwork, hist: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with paddle.no_grad():
        out, n = net.tower(
            paddle.to_tensor(hist.astype("float32")), paddle.to_tensor(lengths.astype("int64"))
        )
    return out.numpy(), n.numpy()


@pytest.mark.parametrize("kw", [{}, {"dynamic_k": True}, {"relu_layer": True}, {"model": "single_vector"},
                                {"bilinear": "per_interest"}, {"bilinear": "none"}, {"global_interest": True},
                                {"recency": True}])
def test_padding_changes_nothing(kw: dict) -> None:
    net = _net(**kw)
    rng = np.random.default_rng(0)
    lengths = np.array([1, 3, 6], dtype=np.int64)
    short = rng.standard_normal((3, 6, D)).astype("float32")
    for i, n in enumerate(lengths):
        short[i, n:] = 0.0
    # Same histories with extra padded positions (L=10 instead of 6) holding garbage, not zeros.
    long = rng.standard_normal((3, L, D)).astype("float32") * 100
    for i, n in enumerate(lengths):
        long[i, :n] = short[i, :n]
    a, na = _encode(net, short, lengths)
    b, nb = _encode(net, long, lengths)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(na, nb)
    # ...and the garbage would have mattered had it been inside the history.
    c, _ = _encode(net, long, np.full(3, L))
    assert not np.allclose(a, c, atol=1e-3)


def test_id_histories_padding_row_is_zero_and_ignored() -> None:
    net = _net()
    assert np.abs(net.item_emb.weight.numpy()[0]).max() == 0.0
    hist = paddle.to_tensor(np.array([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0]]))
    with paddle.no_grad():
        a, _ = net.encode_ids(hist, paddle.to_tensor([3]))
        b, _ = net.encode_ids(hist[:, :3], paddle.to_tensor([3]))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_squash_norms_below_one_and_direction_kept() -> None:
    x = np.random.default_rng(1).standard_normal((64, D)).astype("float32") * np.logspace(-3, 3, 64)[:, None]
    y = squash(paddle.to_tensor(x.astype("float32"))).numpy()
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    assert (ny < 1.0).all()
    np.testing.assert_allclose(ny, nx**2 / (1 + nx**2), rtol=2e-3)  # eps=1e-9 shows at tiny norms
    cos = (x * y).sum(1) / (nx * ny)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
    net = _net()
    caps, _ = _encode(net, np.random.default_rng(2).standard_normal((5, L, D)) * 10, np.full(5, L))
    assert (np.linalg.norm(caps, axis=-1) < 1.0).all()


def test_dynamic_interest_count() -> None:
    lengths = np.array([0, 1, 2, 3, 4, 7, 8, 15, 16, 20, 1000])
    expected = [max(1, min(K, int(np.floor(np.log2(n))))) if n > 0 else 1 for n in lengths]
    got = interest_count(paddle.to_tensor(lengths), K).numpy()
    assert got.tolist() == expected == [1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    net = _net(dynamic_k=True)
    lens = np.array([1, 2, 4, 8, 10])
    caps, n = _encode(net, np.random.default_rng(3).standard_normal((5, L, D)), lens)
    assert n.tolist() == [1, 1, 2, 3, 3]
    for i, k in enumerate(n):  # the extra capsules are masked to zero
        assert (np.abs(caps[i, k:]) == 0).all() and (np.linalg.norm(caps[i, :k], axis=-1) > 0).all()
    _, n_fixed = _encode(_net(), np.zeros((2, L, D)), np.array([1, 10]))
    assert n_fixed.tolist() == [K, K]


def test_routing_logits_fixed_buffer_not_trained() -> None:
    net = _net()
    names = [n for n, _ in net.named_parameters()]
    assert not any("routing" in n for n in names)
    assert "tower.routing_logits" in net.state_dict()
    assert tuple(net.tower.routing_logits.shape) == (1, K, L)


def test_single_vector_shapes_and_mean() -> None:
    net = _net(model="single_vector")
    hist = np.random.default_rng(4).standard_normal((3, L, D)).astype("float32")
    lens = np.array([1, 4, 10])
    out, n = _encode(net, hist, lens)
    assert out.shape == (3, 1, D) and n.tolist() == [1, 1, 1]
    np.testing.assert_allclose(out[1, 0], hist[1, :4].mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"model": "single_vector"}, {"dynamic_k": True, "pow_p": 2.0}])
def test_loss_accidental_hit_and_gradient_to_tied_embedding(kw: dict) -> None:
    net = _net(**kw)
    net.train()
    hist = paddle.to_tensor(np.array([[1, 2, 3, 4, 0, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12, 0, 0]]))
    lengths, target = paddle.to_tensor([4, 8]), paddle.to_tensor([20, 21])
    neg = paddle.to_tensor(np.array([20, 30, 31, 32]))  # 20 is the first user's target: an accidental hit
    logq = paddle.zeros([4])
    loss = net(hist, lengths, target, neg, logq, paddle.zeros([2]))
    assert np.isfinite(float(loss)) and float(loss) > 0
    loss.backward()
    # Changing the accidental-hit negative's logQ changes nothing for user 0 (it is removed).
    with paddle.no_grad():
        a = net(hist[:1], lengths[:1], target[:1], neg, logq, paddle.zeros([1]))
        b = net(hist[:1], lengths[:1], target[:1], neg, paddle.to_tensor([-50.0, 0, 0, 0]), paddle.zeros([1]))
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_hidden_size_must_match_without_readout() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        RecallNetwork(NetConfig(item_count=10, embedding_dim=8, hidden_size=16))
    RecallNetwork(NetConfig(item_count=10, embedding_dim=8, hidden_size=16, relu_layer=True, bilinear="shared"))


def test_comirec_sa_padding_changes_nothing_and_attention_is_convex() -> None:
    net = _net(model="comirec_sa")
    assert net.cfg.k == K and net.readout == "argmax"
    rng = np.random.default_rng(0)
    lengths = np.array([1, 3, 6], dtype=np.int64)
    short = rng.standard_normal((3, 6, D)).astype("float32")
    long = rng.standard_normal((3, L, D)).astype("float32") * 100  # garbage in the padded slots
    for i, n in enumerate(lengths):
        long[i, :n] = short[i, :n]
    a, na = _encode(net, short, lengths)
    b, _ = _encode(net, long, lengths)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert a.shape == (3, K, D) and na.tolist() == [K, K, K]
    # A one-item history: every interest is that item (softmax over one position).
    np.testing.assert_allclose(a[0], np.repeat(short[0, :1], K, axis=0), rtol=1e-5, atol=1e-6)
    # Interests are convex combinations of the history: inside its bounding box.
    for i, n in enumerate(lengths):
        lo, hi = short[i, :n].min(0), short[i, :n].max(0)
        assert (a[i] >= lo - 1e-5).all() and (a[i] <= hi + 1e-5).all()
    # Position embeddings make the attention order-aware: reversing a history changes the interests.
    rev = short.copy()
    rev[2, :6] = short[2, :6][::-1]
    c, _ = _encode(net, rev, lengths)
    assert not np.allclose(a[2], c[2], atol=1e-4)


def _loss_inputs() -> tuple[paddle.Tensor, ...]:
    hist = paddle.to_tensor(np.array([[1, 2, 3, 4, 0, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12, 0, 0]]))
    return (hist, paddle.to_tensor([4, 8]), paddle.to_tensor([20, 21]),
            paddle.to_tensor(np.array([20, 30, 31, 32])), paddle.zeros([4]), paddle.zeros([2]))


@pytest.mark.parametrize("model", ["mind", "comirec_sa", "single_vector"])
def test_hard_negatives_match_the_reweighted_softmax(model: str) -> None:
    beta = 3.0
    plain, hard = _net(model=model), _net(model=model, hard_neg_beta=beta)
    hard.set_state_dict(plain.state_dict())
    args = _loss_inputs()
    with paddle.no_grad():
        interests, n = plain.encode_ids(args[0], args[1])
        user = plain.user_vector(interests, n, plain.item_emb(args[2])).numpy()
        emb = plain.item_emb.weight.numpy()
        got = float(hard(*args))
        base = float(plain(*args))
    pos = (user * emb[[20, 21]]).sum(1)
    raw = user @ emb[[20, 30, 31, 32]].T  # [2, 4]
    losses = []
    for b in range(2):
        keep = np.array([20, 30, 31, 32]) != [20, 21][b]  # accidental hit removed
        s = raw[b, keep]
        w = np.exp(beta * s - np.log(np.exp(beta * s).sum())) * keep.sum()  # mean weight 1
        losses.append(-pos[b] + np.log(np.exp(pos[b]) + (w * np.exp(s)).sum()))
    assert got == pytest.approx(float(np.mean(losses)), rel=1e-4)
    assert got != pytest.approx(base, rel=1e-4)  # the weighting changes the loss


def test_routing_variance_penalty() -> None:
    from model.network import routing_variance_penalty

    w = np.random.default_rng(3).random((2, K, L)).astype("float32")
    got = float(routing_variance_penalty(paddle.to_tensor(w), 16))
    diag = ((w - w.mean(-1, keepdims=True)) ** 2).sum(-1) / 16
    assert got == pytest.approx(float((diag**2).sum()), rel=1e-5)
    assert float(routing_variance_penalty(paddle.full([2, K, L], 0.1), 16)) < 1e-12  # uniform: no penalty


@pytest.mark.parametrize("model", ["mind", "comirec_sa"])
def test_routing_reg_adds_the_penalty_with_a_gradient(model: str) -> None:
    plain, reg = _net(model=model), _net(model=model, routing_reg=100.0)
    reg.set_state_dict(plain.state_dict())
    plain.train()
    reg.train()
    args = _loss_inputs()
    a, b = plain(*args), reg(*args)
    assert float(b) > float(a)
    b.backward()
    weight = reg.tower.bilinear if model == "mind" else reg.tower.w1.weight
    assert weight.grad is not None and float(paddle.abs(weight.grad).sum()) > 0
    # Evaluation mode: no penalty is recorded.
    reg.eval()
    with paddle.no_grad():
        reg.encode_ids(args[0], args[1])
    assert "routing" not in reg.tower.aux


def test_routing_per_sample_draws_logits_per_sample() -> None:
    net = _net(routing_per_sample=True)
    net.train()
    net.tower.resample(np.random.default_rng(0), 3)
    assert net.tower.train_logits.shape == (3, K, L)
    same = np.repeat(np.random.default_rng(1).standard_normal((1, L, D)).astype("float32"), 3, axis=0)
    a, _ = _encode(net, same, np.full(3, L))
    assert not np.allclose(a[0], a[1], atol=1e-4)  # same history, different routing
    net.eval()  # evaluation and export use the fixed buffer: identical histories, identical interests
    b, _ = _encode(net, same, np.full(3, L))
    np.testing.assert_allclose(b[0], b[1], rtol=1e-6)
    per_batch = _net(resample_routing=True)
    per_batch.tower.resample(np.random.default_rng(0), 3)
    assert per_batch.tower.train_logits.shape == (1, K, L)


def test_per_interest_bilinear_with_equal_maps_is_the_shared_one() -> None:
    shared, per = _net(), _net(bilinear="per_interest")
    assert tuple(per.tower.bilinear.shape) == (K, D, D)
    s = shared.tower.bilinear.numpy()
    per.tower.bilinear.set_value(np.repeat(s[None], K, axis=0))
    hist = np.random.default_rng(5).standard_normal((3, L, D)).astype("float32")
    lens = np.array([2, 5, 10])
    a, _ = _encode(shared, hist, lens)
    b, _ = _encode(per, hist, lens)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Different maps give different interests.
    per.tower.bilinear.set_value(np.random.default_rng(6).standard_normal((K, D, D)).astype("float32"))
    c, _ = _encode(per, hist, lens)
    assert not np.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("bilinear", ["shared", "per_interest"])
def test_identity_bilinear_starts_as_pooling(bilinear: str) -> None:
    net = _net(bilinear=bilinear, bilinear_init="identity")
    s = net.tower.bilinear.numpy().reshape(-1, D, D)
    # Near the identity, and (per interest) the K maps differ: the noise breaks their symmetry.
    assert np.abs(s - np.eye(D)).mean() < 0.05 and np.abs(s - np.eye(D)).max() < 0.25
    assert np.abs(s - np.eye(D)).max() > 0.0
    if bilinear == "per_interest":
        assert not np.allclose(s[0], s[1])
    # A one-item history: every interest points along that item's vector, as mean pooling would.
    hist = np.zeros((1, L, D), dtype="float32")
    hist[0, 0] = np.random.default_rng(7).standard_normal(D)
    out, _ = _encode(net, hist, np.array([1]))
    cos = out[0] @ hist[0, 0] / (np.linalg.norm(out[0], axis=1) * np.linalg.norm(hist[0, 0]))
    assert cos.min() > 0.95
    # The normal init is a random map: no such alignment.
    rnd, _ = _encode(_net(bilinear=bilinear, bilinear_init="normal"), hist, np.array([1]))
    assert (rnd[0] @ hist[0, 0] / (np.linalg.norm(rnd[0], axis=1) * np.linalg.norm(hist[0, 0]))).max() < 0.9


def test_no_bilinear_is_routing_with_the_identity_map() -> None:
    none, shared = _net(bilinear="none"), _net(bilinear="shared")
    assert none.tower.bilinear is None and not none.tower.parameters()  # nothing to learn in the tower
    shared.tower.bilinear.set_value(np.eye(D, dtype="float32"))
    hist = np.random.default_rng(8).standard_normal((3, L, D)).astype("float32")
    lens = np.array([1, 4, 10])
    a, n_a = _encode(none, hist, lens)
    b, n_b = _encode(shared, hist, lens)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(n_a, n_b)
    # A learned map that is not the identity gives other interests.
    shared.tower.bilinear.set_value(np.eye(D, dtype="float32") * 2.0 + 0.3)
    c, _ = _encode(shared, hist, lens)
    assert not np.allclose(a, c, atol=1e-3)


def test_no_bilinear_needs_hidden_equal_to_embedding_dim() -> None:
    with pytest.raises(ValueError, match=r"hidden_size.*bilinear=none.*16 != 8"):
        RecallNetwork(NetConfig(item_count=10, embedding_dim=8, hidden_size=16, relu_layer=True, bilinear="none"))


def test_identity_bilinear_is_seeded_by_the_routing_seed() -> None:
    cfg = NetConfig(item_count=50, embedding_dim=D, hidden_size=D, maxlen=L, capsual_max_k=K,
                    bilinear="per_interest")
    a, b = RecallNetwork(cfg, routing_seed=3), RecallNetwork(cfg, routing_seed=3)
    np.testing.assert_array_equal(a.tower.bilinear.numpy(), b.tower.bilinear.numpy())
    assert not np.array_equal(a.tower.bilinear.numpy(), RecallNetwork(cfg, routing_seed=4).tower.bilinear.numpy())


def test_bilinear_init_is_validated() -> None:
    with pytest.raises(ValueError, match=r"bilinear_init.*'zeros'"):
        RecallNetwork(NetConfig(item_count=10, embedding_dim=8, hidden_size=8, bilinear_init="zeros"))


def test_global_interest_is_the_history_mean_first() -> None:
    net = _net(global_interest=True)
    assert net.cfg.k == K + 1
    hist = np.random.default_rng(8).standard_normal((2, L, D)).astype("float32")
    lens = np.array([3, 7])
    out, n = _encode(net, hist, lens)
    assert out.shape == (2, K + 1, D) and n.tolist() == [K + 1, K + 1]
    for i, m in enumerate(lens):
        np.testing.assert_allclose(out[i, 0], hist[i, :m].mean(0), rtol=1e-5, atol=1e-6)
    # The capsules after it are the plain tower's.
    plain, _ = _encode(_net(), hist, lens)
    np.testing.assert_allclose(out[:, 1:], plain, rtol=1e-5, atol=1e-6)
    # With dynamic K the global interest still counts: 1 + K'.
    _, nd = _encode(_net(global_interest=True, dynamic_k=True), hist, np.array([1, 7]))
    assert nd.tolist() == [2, 3]


def _set_recency(net: RecallNetwork, log_w: np.ndarray) -> None:
    net.tower.recency.log_w.set_value(log_w.reshape(-1, 1).astype("float32"))


def test_recency_weights_scale_each_vector_by_its_place_from_the_newest() -> None:
    log_w = np.random.default_rng(3).normal(0.0, 0.5, L)
    hist = np.random.default_rng(4).standard_normal((3, L, D)).astype("float32")
    lens = np.array([1, 4, L])
    sv = _net(model="single_vector", recency=True)
    _set_recency(sv, log_w)
    out, _ = _encode(sv, hist, lens)
    for i, m in enumerate(lens):
        w = np.exp(log_w[m - 1 - np.arange(m)])  # the newest (position m - 1) gets log_w[0]
        np.testing.assert_allclose(out[i, 0], (hist[i, :m] * w[:, None]).mean(0), rtol=1e-5, atol=1e-6)
    # MIND: the same as the plain tower fed the scaled vectors; padding still changes nothing.
    mind, plain = _net(recency=True), _net()
    _set_recency(mind, log_w)
    scaled = hist.copy()
    for i, m in enumerate(lens):
        scaled[i, :m] *= np.exp(log_w[m - 1 - np.arange(m)])[:, None]
    got, _ = _encode(mind, hist, lens)
    np.testing.assert_allclose(got, _encode(plain, scaled, lens)[0], rtol=1e-5, atol=1e-6)
    noisy = hist.copy()
    for i, m in enumerate(lens):
        noisy[i, m:] = 99.0
    np.testing.assert_allclose(_encode(mind, noisy, lens)[0], got, rtol=1e-5, atol=1e-6)


def test_recency_starts_as_no_recency_and_is_trained() -> None:
    hist = np.random.default_rng(5).standard_normal((2, L, D)).astype("float32")
    lens = np.array([2, 6])
    np.testing.assert_allclose(_encode(_net(recency=True), hist, lens)[0], _encode(_net(), hist, lens)[0],
                               rtol=1e-6, atol=1e-7)
    net = _net(recency=True)
    net.train()
    ids = paddle.to_tensor(np.array([[1, 2, 3, 0], [4, 5, 6, 7]], dtype="int64"))
    loss = net(ids, paddle.to_tensor(np.array([3, 4], dtype="int64")), paddle.to_tensor(np.array([8, 9])),
               paddle.to_tensor(np.arange(10, 20, dtype="int64")), paddle.zeros([10]), paddle.zeros([2]))
    loss.backward()
    grad = net.tower.recency.log_w.grad.numpy().ravel()
    assert np.abs(grad[:4]).max() > 0 and np.all(grad[4:] == 0)  # only places 0..3 back occur here
