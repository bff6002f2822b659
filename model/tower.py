"""Serving-side user tower: loads an export directory WITHOUT the training code.

Only numpy and Paddle (``paddle.inference``, or ``paddle.jit.load`` as the fallback) are used, so the
worker never imports ``model.network``. The export carries a probe (inputs + the training-time
network's outputs); ``UserTower.load`` runs it and refuses an engine that does not reproduce it.

Paddle 3.3.1 CPU inference has a bug in its ``inplace_pass``: it miscomputes the capsule squash
(``x * n^2 / (1 + n^2) / n`` where ``n^2`` has several readers). The pass is deleted here, and
the probe check would catch any such miscompilation.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ITEMS = "items.npz"
POPULAR = "popular.npy"
PROBE = "probe.npz"
TOWER_PREFIX = "user_tower"
INPUT_NAMES = ("hist_vectors", "lengths")
PROBE_ATOL = 1e-4


class ExportError(RuntimeError):
    """A missing or inconsistent export directory."""


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (run `mind-recall export` first)") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON: {e}") from None
    for key in ("model_version", "model", "dim", "k", "maxlen", "item_count", "dynamic_k"):
        if key not in manifest:
            raise ExportError(f"{path}: missing field {key!r}")
    return manifest


def load_items(export_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [N], vectors float32 [N, D]) of the real items (no padding row)."""
    path = Path(export_dir) / ITEMS
    if not path.exists():
        raise ExportError(f"{path}: not found")
    with np.load(path) as z:
        return z["ids"].astype(np.int64), z["vectors"].astype(np.float32)


def load_popular(export_dir: str | Path) -> np.ndarray:
    """Item ids by training popularity, most popular first (the cold-start list)."""
    path = Path(export_dir) / POPULAR
    if not path.exists():
        raise ExportError(f"{path}: not found")
    return np.load(path).astype(np.int64)


def _model_file(export_dir: Path) -> Path:
    for suffix in (".json", ".pdmodel"):  # PIR program (Paddle 3) or the legacy ProgramDesc
        p = export_dir / (TOWER_PREFIX + suffix)
        if p.exists():
            return p
    raise ExportError(f"{export_dir}: no {TOWER_PREFIX}.json or {TOWER_PREFIX}.pdmodel")


class _InferenceEngine:
    """paddle.inference predictor; one predictor per engine, guarded by a lock (not thread-safe)."""

    name = "paddle_inference"

    def __init__(self, export_dir: Path, use_gpu: bool, mkldnn: bool) -> None:
        import paddle.inference as pi

        config = pi.Config(str(_model_file(export_dir)), str(export_dir / (TOWER_PREFIX + ".pdiparams")))
        if use_gpu:
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            if mkldnn:
                config.enable_mkldnn()
                self.name = "paddle_inference_onednn"
        config.delete_pass("inplace_pass")  # miscompiles squash in Paddle 3.3.1 (see module doc)
        config.disable_glog_info()
        self._predictor = pi.create_predictor(config)
        names = list(self._predictor.get_input_names())
        if sorted(names) != sorted(INPUT_NAMES):
            raise ExportError(f"{export_dir}: tower inputs {names}, expected {list(INPUT_NAMES)}")
        self._inputs = {n: self._predictor.get_input_handle(n) for n in names}
        self._outputs = [self._predictor.get_output_handle(n) for n in self._predictor.get_output_names()]
        self._lock = threading.Lock()

    def __call__(self, hist: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            for name, arr in (("hist_vectors", hist), ("lengths", lengths)):
                handle = self._inputs[name]
                handle.reshape(list(arr.shape))
                handle.copy_from_cpu(arr)
            self._predictor.run()
            interests, n = (o.copy_to_cpu() for o in self._outputs)
        return interests, n


class _DygraphEngine:
    """Fallback: paddle.jit.load of the same artifact (a TranslatedLayer)."""

    name = "paddle_jit"

    def __init__(self, export_dir: Path, use_gpu: bool) -> None:
        import paddle

        paddle.set_device("gpu" if use_gpu else "cpu")
        self._paddle = paddle
        self._layer = paddle.jit.load(str(export_dir / TOWER_PREFIX))
        self._layer.eval()
        self._lock = threading.Lock()

    def __call__(self, hist: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        paddle = self._paddle
        with self._lock, paddle.no_grad():
            interests, n = self._layer(paddle.to_tensor(hist), paddle.to_tensor(lengths))
        return interests.numpy(), n.numpy()


@dataclass
class UserTower:
    """History vectors -> K interest vectors, from an export directory."""

    model_version: str
    model: str
    dim: int
    k: int
    maxlen: int
    dynamic_k: bool
    engine: Any
    manifest: dict[str, Any]

    @classmethod
    def load(
        cls, export_dir: str | Path, use_gpu: bool = False, *, engine: str = "inference", mkldnn: bool = False
    ) -> UserTower:
        """Load the tower. ``engine``: "inference" (Paddle Inference; falls back to "jit" if it cannot
        load or fails the probe) or "jit" (paddle.jit.load). GPU only when asked and compiled in."""
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        import paddle

        if use_gpu and not paddle.is_compiled_with_cuda():
            log.info("user tower: runner.use_gpu is set but Paddle has no CUDA; running on CPU")
            use_gpu = False
        elif not use_gpu:
            log.info("user tower: running on CPU")
        probe = _read_probe(export_dir)
        chosen: Any = None
        if engine == "inference":
            try:
                chosen = _InferenceEngine(export_dir, use_gpu, mkldnn)
                _check_probe(chosen, probe, export_dir)
            except Exception as e:  # any load/compile failure: the jit fallback below
                log.warning("user tower: Paddle Inference unusable (%s); falling back to paddle.jit.load", e)
                chosen = None
        elif engine != "jit":
            raise ValueError(f"engine must be 'inference' or 'jit', got {engine!r}")
        if chosen is None:
            chosen = _DygraphEngine(export_dir, use_gpu)
            _check_probe(chosen, probe, export_dir)
        return cls(
            model_version=str(manifest["model_version"]), model=str(manifest["model"]),
            dim=int(manifest["dim"]), k=int(manifest["k"]), maxlen=int(manifest["maxlen"]),
            dynamic_k=bool(manifest["dynamic_k"]), engine=chosen, manifest=manifest,
        )

    @property
    def engine_name(self) -> str:
        return str(self.engine.name)

    def encode(self, hist_vectors: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """hist_vectors float32 [B, L, D] (right-padded, L <= maxlen), lengths int64 [B]
        -> (interests float32 [B, K, D], n_interests int64 [B]). Lengths are clipped to [0, L]."""
        hist = np.asarray(hist_vectors, dtype=np.float32)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if hist.ndim != 3 or hist.shape[2] != self.dim:
            raise ValueError(f"hist_vectors must be [B, L, {self.dim}], got {hist.shape}")
        b, length, _ = hist.shape
        if lengths.shape[0] != b:
            raise ValueError(f"lengths has {lengths.shape[0]} rows, hist_vectors {b}")
        if length > self.maxlen:
            raise ValueError(f"history length {length} > maxlen {self.maxlen}: keep the last maxlen items")
        if b == 0:
            return np.zeros((0, self.k, self.dim), np.float32), np.zeros(0, np.int64)
        if length < self.maxlen:  # the artifact has a fixed L; padding never changes the result
            hist = np.concatenate([hist, np.zeros((b, self.maxlen - length, self.dim), np.float32)], axis=1)
        lengths = np.clip(lengths, 0, length)
        interests, n = self.engine(np.ascontiguousarray(hist), lengths)
        return interests.astype(np.float32, copy=False), n.astype(np.int64, copy=False)


def _read_probe(export_dir: Path) -> dict[str, np.ndarray] | None:
    path = export_dir / PROBE
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _check_probe(engine: Any, probe: dict[str, np.ndarray] | None, export_dir: Path) -> None:
    if probe is None:
        return
    interests, n = engine(probe["hist_vectors"], probe["lengths"])
    same_n = np.array_equal(n, probe["n_interests"])
    if not (same_n and np.allclose(interests, probe["interests"], atol=PROBE_ATOL)):
        err = float(np.abs(interests - probe["interests"]).max())
        raise ExportError(
            f"{export_dir}: {engine.name} does not reproduce the probe (max abs error {err:.3g}, "
            f"n_interests {'ok' if same_n else 'differ'})"
        )
