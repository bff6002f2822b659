"""One typed, frozen settings object for the whole service.

Sources, later wins: the dataclass defaults below (mirrored, and checked by a test, in
``config/default.yaml``), a YAML file (``-m FILE``), environment variables
``MIND_RECALL__<SECTION>__<KEY>[__<SUBKEY>]`` and ``-o section.key=value`` overrides.
Environment variables are read here and nowhere else. Every error names the key and the value;
secrets are masked whenever the settings are printed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "MIND_RECALL__"
MASK = "******"

MILVUS_INDEX_TYPES = ("FLAT", "BRUTE_FORCE", "AUTOINDEX", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")


class ConfigError(ValueError):
    """A bad key or value; ``str()`` is a one-line message naming both."""


def _secret() -> Any:
    # repr=False: a section printed on its own (a traceback, a %r of milvus settings) must not leak it
    return field(default="", repr=False, metadata={"secret": True})


def _check(default: Any, ok: Callable[[Any], bool], what: str) -> Any:
    return field(default=default, metadata={"check": ok, "what": what})


def _positive(default: int | float) -> Any:
    return _check(default, lambda v: v > 0, "> 0")


def _non_negative(default: int | float) -> Any:
    return _check(default, lambda v: v >= 0, ">= 0")


def _one_of(default: str, choices: tuple[str, ...]) -> Any:
    return _check(default, lambda v: v in choices, "one of " + "|".join(choices))


def _port(default: int) -> Any:
    return _check(default, lambda v: 0 <= v <= 65535, "a port 0..65535")


@dataclass(frozen=True)
class Optimizer:
    # YAML key is ``class`` (PaddleRec); ``class`` is reserved in Python.
    class_: str = _one_of("Adam", ("Adam", "SGD", "Adagrad", "AdamW"))
    learning_rate: float = _positive(0.001)


@dataclass(frozen=True)
class Runner:
    """PaddleRec ``runner:`` keys (same names where they exist)."""

    train_data_dir: str = "data/synth/train"
    test_data_dir: str = "data/synth/valid"
    model_save_path: str = "output/mind"
    use_gpu: bool = False
    train_batch_size: int = _positive(128)
    infer_batch_size: int = _positive(256)
    epochs: int = _positive(2)
    batches_per_epoch: int = _non_negative(0)  # 0: one pass over the samples
    print_interval: int = _positive(100)
    seed: int = 2026
    progress: bool = True
    resume: bool = False  # continue from the latest checkpoint under model_save_path
    keep_checkpoints: int = _non_negative(0)  # keep the last N epoch checkpoints; 0: all
    valid_data_dir: str = ""  # eval lines for early stopping ("" = test_data_dir)
    early_stop_patience: int = _non_negative(0)  # stop after N epochs without a better valid Recall@50; 0: off


@dataclass(frozen=True)
class HyperParameters:
    """PaddleRec ``hyper_parameters:`` keys for MIND, plus the measured options."""

    model: str = _one_of("mind", ("mind", "comirec_sa", "single_vector"))
    optimizer: Optimizer = field(default_factory=Optimizer)
    item_count: int = _non_negative(0)  # 0: infer from the training data
    embedding_dim: int = _positive(64)
    hidden_size: int = _positive(64)
    neg_samples: int = _positive(1280)
    maxlen: int = _positive(20)
    pow_p: float = _positive(1.0)
    capsual_iters: int = _positive(3)
    capsual_max_k: int = _positive(2)
    capsual_init_std: float = _positive(1.0)
    dynamic_k: bool = False
    relu_layer: bool = False
    resample_routing: bool = False
    sparse_embedding: bool = True
    routing_per_sample: bool = True  # MIND: fresh random routing logits per training sample
    hard_neg_beta: float = _non_negative(0.0)  # REMI hard negatives: weight exp(beta * score); 0: off
    routing_reg: float = _non_negative(0.0)  # REMI routing variance penalty lambda; 0: off
    readout: str = _one_of("auto", ("auto", "attention", "argmax"))  # training readout over interests
    bilinear: str = _one_of("none", ("none", "shared", "per_interest"))  # MIND: S = I, one S, or one S_k per interest
    bilinear_init: str = _one_of("identity", ("identity", "normal"))  # MIND: S starts as I + noise, or N(0, 1/D)
    global_interest: bool = False  # MIND: the history's mean vector as one more interest (K + 1)
    # Co-occurrence item vectors (SimEmb): e_i = W_i + the row-normalised mix of its cooc_neighbors most
    # frequent neighbours within cooc_window clicks; 0: off (plain item vectors).
    cooc_neighbors: int = _non_negative(40)
    cooc_window: int = _positive(3)
    cooc_learned: bool = True  # a learned weight per neighbour rank (starts at 1) on the co-occurrence mix
    # Learned weight per position back from the newest behaviour; auto: on for mind (measured better),
    # off for single_vector (measured worse); comirec_sa has position embeddings and ignores it.
    recency: str = _one_of("auto", ("auto", "true", "false"))


@dataclass(frozen=True)
class Kafka:
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "mind-recall"
    security_protocol: str = _one_of("PLAINTEXT", SECURITY_PROTOCOLS)
    sasl_mechanism: str = _one_of("PLAIN", SASL_MECHANISMS)
    sasl_username: str = ""
    sasl_password: str = _secret()
    ssl_cafile: str = ""
    request_timeout_ms: int = _positive(30000)


@dataclass(frozen=True)
class Topics:
    clicks: str = "clicks"
    item_embeddings: str = "item-embeddings"
    recall_requests: str = "recall-requests"
    recall_results: str = "recall-results"
    dlq: str = "recall-dlq"
    history_changelog: str = "user-history-changelog"
    model_control: str = "model-control"  # compacted, 1 partition: `items rollout` announces the live model here
    partitions: int = _positive(4)


@dataclass(frozen=True)
class Milvus:
    uri: str = ".run/milvus-lite.db"  # a local path: Milvus Lite; http(s)://host:port: a server
    token: str = _secret()
    alias: str = "items"
    collection_prefix: str = "items_"
    index_type: str = _one_of("FLAT", MILVUS_INDEX_TYPES)
    index_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    consistency_level: str = _one_of("Bounded", CONSISTENCY_LEVELS)
    timeout_s: float = _positive(10.0)
    search_chunk: int = _positive(256)  # queries per search call; a batch's calls run concurrently


@dataclass(frozen=True)
class Worker:
    group_id: str = "mind-recall-worker"
    item_writer_group: str = "mind-recall-item-writer"
    export_dir: str = "output/export"
    batch_max: int = _positive(256)
    batch_ms: float = _non_negative(2.0)
    pipeline_depth: int = _positive(2)  # micro-batches in flight (1: one at a time)
    overlap_encode: bool = True  # the tower of one batch runs while the previous one is searched
    commit_interval_ms: float = _non_negative(100.0)  # 0: commit after every batch
    fetch_max_wait_ms: int = _check(10, lambda v: 1 <= v <= 500, "1..500")
    item_batch_max: int = _positive(2000)
    item_batch_ms: float = _non_negative(50.0)
    max_top_k: int = _positive(500)
    default_top_k: int = _positive(50)
    max_hist: int = _positive(1000)
    max_record_bytes: int = _positive(1_048_576)
    # a dead letter over this (key + value + headers) keeps a prefix, sizes and hashes (DeadLetter.fit):
    # a record as large as the broker allows would not fit with its headers. Keep it under the DLQ topic's
    # max.message.bytes (broker default 1048588).
    dlq_max_bytes: int = _check(1_000_000, lambda v: v >= 4096, ">= 4096")
    exclude_seen: bool = True
    cold_start_size: int = _positive(500)
    nearline: bool = False
    nearline_min_interval_s: float = _non_negative(10.0)
    outage_limit_s: float = _positive(300.0)
    retry_backoff_s: float = _positive(0.5)
    session_timeout_ms: int = _check(10000, lambda v: 6000 <= v <= 300000, "6000..300000 (broker group limits)")
    follow_rollouts: bool = True  # switch to the model `items rollout` announces, without a restart
    rollout_ready_timeout_s: float = _positive(120.0)  # give up on an announced model not servable by then


@dataclass(frozen=True)
class Http:
    host: str = "127.0.0.1"
    port: int = _port(8000)
    token: str = _secret()
    max_body_bytes: int = _positive(4_194_304)
    max_histories: int = _positive(1024)
    # query vectors x hits of one /rec/recall's search (histories x K x (top_k + seen/4 + 2)); over it: 413
    max_recall_work: int = _positive(262_144)


@dataclass(frozen=True)
class Metrics:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = _port(9464)
    namespace: str = "mind_recall"


@dataclass(frozen=True)
class Settings:
    runner: Runner = field(default_factory=Runner)
    hyper_parameters: HyperParameters = field(default_factory=HyperParameters)
    kafka: Kafka = field(default_factory=Kafka)
    topics: Topics = field(default_factory=Topics)
    milvus: Milvus = field(default_factory=Milvus)
    worker: Worker = field(default_factory=Worker)
    http: Http = field(default_factory=Http)
    metrics: Metrics = field(default_factory=Metrics)

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """Plain nested dict with YAML key names; secrets masked unless asked otherwise."""
        return _to_dict(self, mask_secrets)

    def dump(self, *, mask_secrets: bool = True) -> str:
        return yaml.safe_dump(self.to_dict(mask_secrets=mask_secrets), sort_keys=False)

    def as_overrides(self) -> list[str]:
        """``key=value`` for every key that differs from the defaults, so a child process started with them
        as ``-o`` sees these settings. Secrets included: pass them only to processes you start."""
        out: list[str] = []

        def walk(cur: dict[str, Any], default: dict[str, Any], prefix: str) -> None:
            for k, v in cur.items():
                if isinstance(v, dict) and k not in ("index_params", "search_params"):
                    walk(v, default[k], f"{prefix}{k}.")
                elif v != default[k]:
                    text = v if isinstance(v, str) else json.dumps(v)  # JSON is YAML for the typed keys
                    out.append(f"{prefix}{k}={text}")

        walk(self.to_dict(mask_secrets=False), Settings().to_dict(mask_secrets=False), "")
        return out

    def replace(self, *overrides: str) -> Settings:
        """A copy with ``section.key=value`` overrides applied (values parsed as YAML)."""
        return load(None, overrides=overrides, env={}, base=self)

    def __repr__(self) -> str:  # never leak secrets through logs or tracebacks
        return f"Settings({self.to_dict()!r})"

    __str__ = __repr__


def _yaml_name(f: dataclasses.Field[Any]) -> str:
    return "class" if f.name == "class_" else f.name


def _to_dict(obj: Any, mask: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _to_dict(value, mask)
        elif isinstance(value, dict):
            value = dict(value)
        if mask and f.metadata.get("secret") and value:
            value = MASK
        out[_yaml_name(f)] = value
    return out


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            try:
                v = float(value)
                if math.isfinite(v):
                    return v
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, bool):  # YAML reads `key: true` as a bool; a str key keeps what was written
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
    elif origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
    else:  # pragma: no cover - a programming error in this module
        raise TypeError(f"unsupported settings type {typ!r} for {key}")
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"config: {key}: expected {name}, got {value!r}")


def _build(cls: type, data: Mapping[str, Any], prefix: str, base: Any) -> Any:
    hints = typing.get_type_hints(cls)
    by_yaml = {_yaml_name(f): f for f in dataclasses.fields(cls)}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: {prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    for k in data:
        if k not in by_yaml:
            raise ConfigError(f"config: unknown key '{prefix}{k}'")
    kwargs: dict[str, Any] = {}
    for yname, f in by_yaml.items():
        key = prefix + yname
        typ = hints[f.name]
        current = getattr(base, f.name)
        if yname not in data:
            kwargs[f.name] = current
            continue
        raw = data[yname]
        if isinstance(raw, _Text):
            raw = raw.raw if typ is str else raw.parsed()
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build(typ, raw if raw is not None else {}, key + ".", current)  # type: ignore[arg-type]
            continue
        value = _coerce(key, raw, typ)
        check = f.metadata.get("check")
        if check is not None and not check(value):
            raise ConfigError(f"config: {key}: expected {f.metadata['what']}, got {raw!r}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = [p for p in dotted.split(".")]
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"config: bad key {dotted!r} in {source}")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config: {dotted}: '{p}' is not a section ({source})")
        node = nxt
    node[parts[-1]] = value


@dataclass(frozen=True)
class _Text:
    """A value from the environment or ``-o``: parsed as YAML for typed keys, kept verbatim for strings
    (YAML would turn a token like ``0123`` into 83 and ``1:30`` into 90)."""

    raw: str

    def parsed(self) -> Any:
        try:
            return yaml.safe_load(self.raw) if self.raw != "" else ""
        except yaml.YAMLError:
            return self.raw


def _parse_scalar(text: str) -> _Text:
    return _Text(text)


def _env_tree(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = ".".join(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
        _set_path(tree, dotted, _parse_scalar(raw), f"environment variable {name}")
    return tree


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k not in ("index_params", "search_params"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Build the settings from defaults, a YAML file, the environment and ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {p}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {p}: not valid YAML: {str(e).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config: {p}: expected a mapping at the top, got {type(loaded).__name__}")
        tree = loaded
    tree = _merge(tree, _env_tree(os.environ if env is None else env))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config: override {item!r} is not key=value")
        key, _, raw = item.partition("=")
        over: dict[str, Any] = {}
        _set_path(over, key.strip(), _parse_scalar(raw), f"override {item!r}")
        tree = _merge(tree, over)
    settings: Settings = _build(Settings, tree, "", base or Settings())
    return settings


def defaults_yaml() -> str:
    """The defaults as YAML (what ``config/default.yaml`` must hold)."""
    return Settings().dump(mask_secrets=False)
