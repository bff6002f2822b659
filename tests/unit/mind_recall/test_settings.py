"""Config: defaults file in sync, good and bad values, env and -o overrides, secret masking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mind_recall.settings import ConfigError, Settings, load

ROOT = Path(__file__).resolve().parents[3]


def test_default_yaml_matches_dataclass_defaults() -> None:
    assert load(ROOT / "config" / "default.yaml", env={}) == Settings()


def test_every_shipped_config_loads() -> None:
    for path in sorted((ROOT / "config").glob("*.yaml")):
        load(path, env={})


def test_file_env_and_override_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("runner:\n  epochs: 3\n  train_batch_size: 64\nmilvus:\n  index_type: HNSW\n")
    env = {"MIND_RECALL__RUNNER__EPOCHS": "5", "MIND_RECALL__MILVUS__INDEX_PARAMS": "{M: 16}"}
    s = load(cfg, overrides=["runner.epochs=7", "hyper_parameters.optimizer.class=SGD"], env=env)
    assert s.runner.epochs == 7  # -o beats env beats file
    assert s.runner.train_batch_size == 64
    assert s.milvus.index_type == "HNSW" and s.milvus.index_params == {"M": 16}
    assert s.hyper_parameters.optimizer.class_ == "SGD"


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.runner.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("milvus.tokn=x", "unknown key 'milvus.tokn'"),
        ("nosuch.key=1", "unknown key 'nosuch'"),
        ("runner.epochs=abc", "runner.epochs: expected int, got 'abc'"),
        ("runner.epochs=0", "runner.epochs: expected > 0, got 0"),
        ("runner.use_gpu=maybe", "runner.use_gpu: expected bool, got 'maybe'"),
        ("milvus.index_type=IVF_PQ", "milvus.index_type: expected one of"),
        ("http.port=70000", "http.port: expected a port 0..65535, got 70000"),
        ("hyper_parameters.optimizer.learning_rate=nan", "learning_rate: expected float, got 'nan'"),
        ("runner=3", "runner: expected a mapping, got 3"),
        ("milvus.index_params=[1]", "milvus.index_params: expected dict"),
        ("noequals", "is not key=value"),
        ("hyper_parameters.recency=maybe", "hyper_parameters.recency: expected one of auto|true|false, got 'maybe'"),
    ],
)
def test_bad_values_name_key_and_value(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(None, overrides=[override], env={})
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"runner.epochs: expected int, got 'x'"):
        load(None, env={"MIND_RECALL__RUNNER__EPOCHS": "x"})
    with pytest.raises(ConfigError, match=r"unknown key 'runner\.epoch'"):
        load(None, env={"MIND_RECALL__RUNNER__EPOCH": "1"})


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("runner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad, env={})


def test_secrets_masked_everywhere() -> None:
    s = load(
        None,
        overrides=["milvus.token=tok-123", "http.token=http-456"],
        env={"MIND_RECALL__KAFKA__SASL_PASSWORD": "pw-789"},
    )
    assert (s.milvus.token, s.http.token, s.kafka.sasl_password) == ("tok-123", "http-456", "pw-789")
    for text in (s.dump(), repr(s), str(s)):
        for secret in ("tok-123", "http-456", "pw-789"):
            assert secret not in text
    assert "tok-123" in s.dump(mask_secrets=False)


def test_string_values_are_kept_verbatim() -> None:
    """YAML would read 0123 as octal 83 and 1:30 as sexagesimal 90: strings keep the text given."""
    s = load(None, overrides=["http.token=0123", "topics.clicks=1:30"], env={"MIND_RECALL__MILVUS__TOKEN": "0x1F"})
    assert (s.http.token, s.topics.clicks, s.milvus.token) == ("0123", "1:30", "0x1F")
    assert load(None, overrides=["runner.epochs=0x1F"], env={}).runner.epochs == 31  # typed keys still parse


def test_sections_alone_do_not_print_secrets() -> None:
    s = load(None, overrides=["milvus.token=tok-1", "http.token=tok-2", "kafka.sasl_password=tok-3"], env={})
    for section in (s.milvus, s.http, s.kafka):
        assert "tok-" not in repr(section) and "tok-" not in str(section)


def test_as_overrides_round_trips() -> None:
    s = load(None, overrides=[
        "runner.epochs=9", "runner.use_gpu=true", "http.token=0123", "milvus.index_type=HNSW",
        "milvus.index_params={M: 32, efConstruction: 200}", "worker.batch_ms=5", "topics.clicks=c-1",
    ], env={})
    assert load(None, overrides=s.as_overrides(), env={}) == s
    assert Settings().as_overrides() == []


def test_replace_keeps_the_rest() -> None:
    s = load(None, overrides=["runner.epochs=4"], env={})
    t = s.replace("runner.seed=1")
    assert (t.runner.epochs, t.runner.seed, s.runner.seed) == (4, 1, Settings().runner.seed)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_cli_config_show_masks_token() -> None:
    r = _cli("config", "show", "-o", "milvus.token=abc")
    assert r.returncode == 0, r.stderr
    assert "token: '******'" in r.stdout and "abc" not in r.stdout


def test_cli_bad_key_is_one_line_error() -> None:
    r = _cli("config", "show", "-o", "milvus.tokn=abc")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["mind-recall: config: unknown key 'milvus.tokn'"]


def test_recency_auto_is_on_for_mind_only(tmp_path: Path) -> None:
    from model.network import NetConfig

    def net(*o: str) -> bool:
        return NetConfig.from_settings(load(None, overrides=list(o), env={}).hyper_parameters, 10).recency

    assert net() is True and net("hyper_parameters.model=single_vector") is False
    assert net("hyper_parameters.recency=false") is False
    assert net("hyper_parameters.model=single_vector", "hyper_parameters.recency=true") is True
    cfg = tmp_path / "c.yaml"
    cfg.write_text("hyper_parameters:\n  recency: false\n")  # a YAML boolean for a three-way key
    assert load(cfg, env={}).hyper_parameters.recency == "false"
