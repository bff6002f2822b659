"""Co-occurrence neighbours (model/cooc.py) and the network's mixed item vectors."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.cooc import cooc_neighbors
from model.network import NetConfig, RecallNetwork


def _seqs(*rows: list[int]) -> list[np.ndarray]:
    return [np.array(r, dtype=np.int64) for r in rows]


def test_window_one_counts_adjacent_clicks_both_ways() -> None:
    ids, w = cooc_neighbors(_seqs([1, 2, 3], [1, 2]), item_count=5, window=1, top=3)
    assert ids.shape == w.shape == (5, 4)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert w[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]  # padding row stays zero
    assert ids[1].tolist() == [1, 2, 0, 0] and w[1].tolist() == pytest.approx([1, 1, 0, 0])
    # Item 2 is next to 1 twice and to 3 once: most frequent first, weights = share of the kept counts.
    assert ids[2].tolist() == [2, 1, 3, 0] and w[2].tolist() == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert ids[4].tolist() == [4, 0, 0, 0] and w[4].tolist() == [1, 0, 0, 0]  # never clicked: itself only
    assert np.all(w[0] == 0)


def test_window_reaches_further_and_top_cuts_with_smaller_id_on_ties() -> None:
    ids, _ = cooc_neighbors(_seqs([1, 2, 3]), item_count=4, window=2, top=3)
    assert ids[1].tolist() == [1, 2, 3, 0]  # 3 is two places from 1
    ids, w = cooc_neighbors(_seqs([5, 1, 3, 1, 2]), item_count=6, window=1, top=2)
    # 1's neighbours: 3 (twice), 5 and 2 (once each): keep 3, then 2 (smaller id than 5).
    assert ids[1].tolist() == [1, 3, 2] and w[1].tolist() == pytest.approx([1, 2 / 3, 1 / 3])


def test_repeats_are_not_their_own_neighbour_and_top_zero_is_identity() -> None:
    ids, w = cooc_neighbors(_seqs([1, 1, 1, 2]), item_count=3, window=2, top=2)
    assert ids[1].tolist() == [1, 2, 0] and w[1].tolist() == pytest.approx([1, 1, 0])
    ids, w = cooc_neighbors(_seqs([1, 2]), item_count=3, window=1, top=0)
    assert ids.tolist() == [[0], [1], [2]] and w.tolist() == [[0], [1], [1]]


@pytest.mark.parametrize("seqs, kw", [
    (_seqs([1, 9]), {"item_count": 5, "window": 1, "top": 2}),
    (_seqs([1, 2]), {"item_count": 5, "window": 0, "top": 2}),
])
def test_bad_input_is_a_clear_error(seqs: list[np.ndarray], kw: dict) -> None:
    with pytest.raises(ValueError):
        cooc_neighbors(seqs, **kw)


def _net(**kw: object) -> RecallNetwork:
    paddle.seed(0)
    cfg = NetConfig(item_count=6, embedding_dim=4, hidden_size=4, maxlen=5, **kw)  # type: ignore[arg-type]
    net = RecallNetwork(cfg)
    net.eval()
    return net


def test_mixed_vectors_are_what_is_searched_and_encoded() -> None:
    net = _net(cooc_neighbors=2)
    ids, w = cooc_neighbors(_seqs([1, 2, 3, 1, 2]), item_count=6, window=1, top=2)
    # Before set_cooc every item is itself: the same vectors as without the option.
    np.testing.assert_allclose(net.item_vectors(), net.item_emb.weight.numpy()[1:], rtol=1e-6)
    net.set_cooc(ids, w)
    table = net.item_emb.weight.numpy()
    expected = (table[ids] * w[..., None]).sum(axis=1)
    np.testing.assert_allclose(net.item_vectors(), expected[1:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected[1:4], table[1:4])  # the neighbours did change clicked items
    with paddle.no_grad():
        got = net.vectors(paddle.to_tensor(np.array([[2, 0], [5, 1]]))).numpy()
    np.testing.assert_allclose(got, expected[[[2, 0], [5, 1]]], rtol=1e-5, atol=1e-6)
    assert np.all(got[0, 1] == 0)  # padding stays zero
    # The tower sees the mixed vectors: encoding ids == encoding the mixed vectors directly.
    hist, lengths = np.array([[1, 2, 3, 0, 0]]), np.array([3])
    with paddle.no_grad():
        a, _ = net.encode_ids(paddle.to_tensor(hist), paddle.to_tensor(lengths))
        b, _ = net.tower(paddle.to_tensor(expected[hist].astype("float32")), paddle.to_tensor(lengths))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_the_table_is_saved_with_the_network_and_checked() -> None:
    net = _net(cooc_neighbors=2)
    ids, w = cooc_neighbors(_seqs([1, 2, 3]), item_count=6, window=1, top=2)
    net.set_cooc(ids, w)
    other = _net(cooc_neighbors=2)
    other.set_state_dict(net.state_dict())
    np.testing.assert_array_equal(other.cooc_ids.numpy(), ids)
    np.testing.assert_allclose(other.item_vectors(), net.item_vectors())
    with pytest.raises(ValueError, match="co-occurrence table"):
        net.set_cooc(ids[:, :2], w[:, :2])
    with pytest.raises(ValueError, match="co-occurrence table"):
        _net().set_cooc(ids, w)


def test_learned_rank_weights_start_as_the_plain_mix_and_are_trained_saved_and_exported() -> None:
    table = cooc_neighbors(_seqs([1, 2, 3, 1, 2], [4, 5, 3]), item_count=6, window=2, top=3)
    plain, learned = _net(cooc_neighbors=3), _net(cooc_neighbors=3, cooc_learned=True)
    plain.set_cooc(*table)
    learned.set_cooc(*table)
    # Starting at 1 every item's vector is the plain co-occurrence mix.
    np.testing.assert_allclose(learned.item_vectors(), plain.item_vectors(), rtol=1e-6)
    # The loss reaches the rank weights (through history, targets and negatives alike) ...
    hist = paddle.to_tensor(np.array([[1, 2, 0, 0, 0], [4, 5, 3, 0, 0]]))
    h, t, n = learned._batch_vectors(hist, paddle.to_tensor(np.array([3, 2])), paddle.to_tensor(np.array([1, 5])))
    (paddle.sum(h * h) + paddle.sum(t) - paddle.sum(n)).backward()
    g = learned.cooc_rank_w.grad
    assert g is not None and g.shape == [3] and np.abs(g.numpy()).sum() > 0
    # ... and what they become is what is searched, encoded and saved: rank r's neighbour is scaled by s_r.
    s = np.array([2.0, 0.5, -1.0], dtype=np.float32)
    learned.cooc_rank_w.set_value(paddle.to_tensor(s))
    ids, w = table
    emb = learned.item_emb.weight.numpy()
    expected = (emb[ids] * (w * np.concatenate([[1.0], s]))[..., None]).sum(axis=1)
    np.testing.assert_allclose(learned.item_vectors(), expected[1:], rtol=1e-5, atol=1e-6)
    with paddle.no_grad():
        got = learned.vectors(paddle.to_tensor(np.array([1, 3, 0]))).numpy()
    np.testing.assert_allclose(got, expected[[1, 3, 0]], rtol=1e-5, atol=1e-6)
    other = _net(cooc_neighbors=3, cooc_learned=True)
    other.set_state_dict(learned.state_dict())
    np.testing.assert_allclose(other.item_vectors(), learned.item_vectors())


@pytest.mark.parametrize("neighbours", [0, 2])
def test_one_batch_lookup_matches_separate_lookups_and_their_gradient(neighbours: int) -> None:
    net = _net(cooc_neighbors=neighbours, sparse_embedding=False)
    if neighbours:
        net.set_cooc(*cooc_neighbors(_seqs([1, 2, 3, 1, 2], [4, 5]), item_count=6, window=1, top=2))
    hist = paddle.to_tensor(np.array([[1, 2, 0, 0, 0], [4, 4, 5, 2, 0]]))
    target, negs = paddle.to_tensor(np.array([3, 2])), paddle.to_tensor(np.array([1, 5, 3]))

    def grad(parts: tuple[paddle.Tensor, ...]) -> tuple[list[np.ndarray], np.ndarray]:
        rng = np.random.default_rng(0)  # the same random loss weights for both lookups
        loss = sum(paddle.sum(p * paddle.to_tensor(rng.standard_normal(p.shape).astype("float32")))
                   for p in parts)
        net.clear_gradients()
        loss.backward()  # type: ignore[union-attr]
        g = net.item_emb.weight.grad
        assert g is not None
        return [p.numpy() for p in parts], g.numpy().copy()

    one, g_one = grad(net._batch_vectors(hist, target, negs))
    three, g_three = grad((net.vectors(hist), net.vectors(target), net.vectors(negs)))
    for a, b in zip(one, three, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert one[0].shape == (2, 5, 4) and one[2].shape == (3, 4)
    np.testing.assert_allclose(g_one, g_three, rtol=1e-5, atol=1e-6)
    assert np.abs(g_one).sum() > 0


def test_a_checkpoint_from_before_cooc_learned_loads_and_resumes_as_off() -> None:
    import dataclasses

    from model.trainer import _checkpoint_net

    net = dataclasses.asdict(NetConfig(item_count=6, cooc_neighbors=3))
    del net["cooc_learned"]  # what meta.json held before the option existed
    assert _checkpoint_net({"net": net}) == NetConfig(item_count=6, cooc_neighbors=3, cooc_learned=False)
