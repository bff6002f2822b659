"""MIND network: routing ignores padding, squash keeps norms < 1, dynamic K, loss and baseline shapes."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.network import NetConfig, RecallNetwork, interest_count, squash

D, L, K = 8, 10, 4


def _net(**kw: object) -> RecallNetwork:
    paddle.seed(0)
    base = {"item_count": 50, "embedding_dim": D, "hidden_size": D, "maxlen": L, "capsual_max_k": K}
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


@pytest.mark.parametrize("kw", [{}, {"dynamic_k": True}, {"relu_layer": True}, {"model": "single_vector"}])
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
    RecallNetwork(NetConfig(item_count=10, embedding_dim=8, hidden_size=16, relu_layer=True))
