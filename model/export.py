"""Export a checkpoint for serving: ``mind-recall export -m CFG [--epoch E] --out DIR``.

DIR/user_tower.{json|pdmodel,pdiparams}  the user tower alone (paddle.jit.save; inputs
                                         hist_vectors float32 [B, maxlen, D], lengths int64 [B];
                                         outputs interests float32 [B, K, D], n_interests int64 [B])
DIR/items.npz                            ids int64 [N], vectors float32 [N, D] (real items only)
DIR/popular.npy                          item ids by training popularity (the cold-start list)
DIR/probe.npz                            inputs + training-network outputs, checked at load
DIR/manifest.json                        model_version (content hash), model, dim, k, maxlen, ...

The directory is written next to DIR and swapped in, so a reader never sees half an export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from model.tower import ITEMS, MANIFEST, POPULAR, PROBE, TOWER_PREFIX, UserTower

log = logging.getLogger(__name__)


def popular_order(popularity: np.ndarray) -> np.ndarray:
    """Ids of the items clicked in training, most clicked first (ties: smaller id first)."""
    counts = np.asarray(popularity, dtype=np.int64).copy()
    counts[0] = -1  # padding
    order = np.lexsort((np.arange(counts.size), -counts))
    return order[counts[order] > 0].astype(np.int64)


def content_version(tower_state: dict[str, np.ndarray], ids: np.ndarray, vectors: np.ndarray,
                    fields: dict[str, Any]) -> str:
    """sha256 over the tower weights, the item vectors and the shape fields: first 12 hex digits.
    Equal content gives an equal version, whatever the time or the machine of the export."""
    h = hashlib.sha256()
    h.update(json.dumps(fields, sort_keys=True).encode())
    for name in sorted(tower_state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tower_state[name]).tobytes())
    h.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return h.hexdigest()[:12]


def _probe_inputs(vectors: np.ndarray, maxlen: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Histories of real item vectors at every length 0..maxlen, garbage in the padded slots
    (so the probe also proves that padding is ignored)."""
    rng = np.random.default_rng(seed)
    lengths = np.arange(maxlen + 1, dtype=np.int64)
    pick = rng.integers(0, vectors.shape[0], size=(lengths.size, maxlen))
    hist = vectors[pick].astype(np.float32)
    pad = np.arange(maxlen)[None, :] >= lengths[:, None]
    hist[pad] = rng.standard_normal((int(pad.sum()), vectors.shape[1])).astype(np.float32)
    return hist, lengths


def export_network(net: Any, popularity: np.ndarray, out_dir: str | Path, extra: dict[str, Any] | None = None,
                   *, verify: bool = True) -> dict[str, Any]:
    """Write the export directory for a trained RecallNetwork; returns the manifest."""
    import paddle
    from paddle.static import InputSpec

    cfg = net.cfg
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    net.eval()
    tower = net.tower
    ids = np.arange(1, cfg.item_count, dtype=np.int64)
    vectors = net.item_vectors()
    fields = {
        "model": cfg.model, "dim": cfg.embedding_dim, "k": cfg.k, "maxlen": cfg.maxlen,
        # item_count as in hyper_parameters: embedding rows = max item id + 1 (row 0 is padding).
        "item_count": int(cfg.item_count), "n_items": int(ids.size), "dynamic_k": bool(cfg.dynamic_k),
    }
    state = {k: v.numpy() for k, v in tower.state_dict().items()}
    version = content_version(state, ids, vectors, fields)

    spec = [
        InputSpec([None, cfg.maxlen, cfg.embedding_dim], "float32", "hist_vectors"),
        InputSpec([None], "int64", "lengths"),
    ]
    static = paddle.jit.to_static(tower, input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(tmp / TOWER_PREFIX))
    np.savez(tmp / ITEMS, ids=ids, vectors=vectors)
    np.save(tmp / POPULAR, popular_order(popularity))

    hist, lengths = _probe_inputs(vectors, cfg.maxlen)
    with paddle.no_grad():
        interests, n = tower(paddle.to_tensor(hist), paddle.to_tensor(lengths))
    np.savez(
        tmp / PROBE, hist_vectors=hist, lengths=lengths, interests=interests.numpy(), n_interests=n.numpy()
    )

    manifest = {
        "model_version": version, **fields,
        "hidden_size": cfg.hidden_size, "relu_layer": bool(cfg.relu_layer),
        "inputs": {"hist_vectors": ["B", cfg.maxlen, cfg.embedding_dim], "lengths": ["B"]},
        "outputs": {"interests": ["B", cfg.k, cfg.embedding_dim], "n_interests": ["B"]},
        "paddle": paddle.__version__, "created_ts": int(time.time() * 1000), **(extra or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")

    if verify:  # the serving loader must reproduce the training network on the probe
        engine = UserTower.load(tmp).engine_name
        if engine != "paddle_inference":
            log.warning("export: Paddle Inference could not run the tower; the worker will use %s", engine)

    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    log.info("exported %s (model_version %s, %d items) to %s", cfg.model, version, ids.size, out)
    return manifest


def export_checkpoint(settings: Any, out_dir: str | Path, epoch: int | None = None) -> dict[str, Any]:
    """Export the checkpoint of ``epoch`` (default: latest) under ``runner.model_save_path``."""
    import paddle

    from model.trainer import find_checkpoint, load_network, load_popularity

    paddle.set_device("cpu")  # the export is device-independent; CPU keeps it deterministic
    ckpt = find_checkpoint(settings.runner.model_save_path, epoch)
    net, meta = load_network(ckpt)
    extra = {"epoch": int(meta["epoch"]), "checkpoint": str(ckpt)}
    return export_network(net, load_popularity(ckpt), out_dir, extra)
