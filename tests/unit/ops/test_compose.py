"""docker-compose.yml, parsed (no Docker engine runs here): the services, pinned images, healthchecks,
dependency conditions, named volumes and the application's configuration all hang together.

The application containers' environment goes through the real settings loader and their commands
through the real CLI parser, so a renamed key or subcommand fails here rather than at `compose up`.
"""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from mind_recall.settings import load

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
APP_SERVICES = ("model-init", "worker", "item-writer", "demo-producer")
STATEFUL = {"kafka": "/var/lib/kafka/data", "etcd": "/etcd", "minio": "/minio_data",
            "milvus": "/var/lib/milvus", "prometheus": "/prometheus", "grafana": "/var/lib/grafana"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume or a ./relative bind path)."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        out[dst] = src
    return out


def test_the_stack_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {"kafka", "etcd", "minio", "milvus", "prometheus", "grafana", *APP_SERVICES}
    assert services["demo-producer"]["profiles"] == ["demo"]
    assert [s for s, d in services.items() if d.get("profiles") and s != "demo-producer"] == []


@pytest.mark.parametrize("name", ["kafka", "etcd", "minio", "milvus", "prometheus", "grafana", *APP_SERVICES])
def test_images_are_pinned(services: dict[str, Any], name: str) -> None:
    image = services[name]["image"]
    repo, _, tag = image.rpartition(":")
    assert repo and "/" not in tag and tag, f"{name}: {image} has no tag"
    assert tag != "latest" and not tag.endswith("-latest"), f"{name}: {image} is not pinned"
    assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_dockerfile_base_is_pinned_and_installs_the_package(services: dict[str, Any]) -> None:
    build = services["worker"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases)
    assert bases[0].startswith("python:") and "slim" in bases[0]
    assert re.search(r"pip install[^\n]*\s\.(\s|$)", dockerfile)
    assert re.search(r"^USER\s+(?!root)\S+", dockerfile, flags=re.M), "the image must not run as root"
    assert (ROOT / ".dockerignore").read_text(encoding="utf-8").count(".venv")


def test_kafka_runs_kraft(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not [k for k in env if "ZOOKEEPER" in k]
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@kafka:")
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID must be a base64 UUID"
    listeners = {x.split("://")[0] for x in env["KAFKA_LISTENERS"].split(",")}
    mapped = {x.split(":")[0] for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners and listeners <= mapped
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_milvus_standalone_uses_etcd_and_minio(services: dict[str, Any]) -> None:
    milvus = services["milvus"]
    assert milvus["image"].startswith("milvusdb/milvus:")
    assert milvus["command"][-1] == "standalone"
    env = _env(milvus)
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
    assert {"etcd", "minio"} <= set(milvus["depends_on"])


def test_ports(services: dict[str, Any]) -> None:
    published = {name: {str(p).split(":")[-1] for p in s.get("ports", [])} for name, s in services.items()}
    assert "29092" in published["kafka"] and "19530" in published["milvus"]
    assert "9090" in published["prometheus"] and "3000" in published["grafana"]
    for name in APP_SERVICES:  # replicas must not collide on host ports (docker compose --scale)
        assert not published[name], name
        assert "container_name" not in services[name]


def test_healthchecks_and_dependency_conditions(services: dict[str, Any]) -> None:
    for name, s in services.items():
        one_shot = s.get("restart") == "no"
        if not one_shot:
            hc = s.get("healthcheck")
            assert hc and hc["test"][0] in ("CMD", "CMD-SHELL"), f"{name} needs a healthcheck"
            assert {"interval", "timeout", "retries"} <= set(hc), name
        deps = s.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec["condition"] in CONDITIONS, (name, dep)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: no check"
            if spec["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} must be a one-shot"
    for name in ("worker", "item-writer"):
        deps = services[name]["depends_on"]
        assert deps["kafka"]["condition"] == deps["milvus"]["condition"] == "service_healthy"
        assert deps["model-init"]["condition"] == "service_completed_successfully"


def test_no_dependency_cycle(services: dict[str, Any]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in services[name].get("depends_on", {}):
                visit(dep, (*path, name))
            done.add(name)

    for name in services:
        visit(name, ())


def test_named_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, s in services.items():
        for src in _mounts(s).values():
            if src.startswith((".", "/")):
                assert (ROOT / src).exists(), f"{name}: bind source {src} is missing"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
                used.add(src)
    assert used == declared
    for name, path in STATEFUL.items():
        src = _mounts(services[name]).get(path)
        assert src in declared, f"{name} keeps its data at {path} in a named volume"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_is_a_valid_config(services: dict[str, Any], name: str) -> None:
    s = services[name]
    env = _env(s)
    settings = load(None, env=env)  # raises ConfigError on an unknown key or a bad value
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.milvus.uri == "http://milvus:19530"
    assert settings.metrics.host == "0.0.0.0"
    assert s["build"]["dockerfile"] == "Dockerfile" and s["image"] == services["worker"]["image"]


def _cli_lines(command: list[str] | str) -> list[list[str]]:
    """The mind-recall invocations of a service command (an argv, or `sh -ec SCRIPT` lines)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[0] == "mind-recall":
        return [argv[1:]]
    assert argv[0] == "sh", argv
    out = []
    for line in argv[-1].splitlines():
        words = shlex.split(line.replace("$$", "$").rstrip("&").strip())
        if words and words[0] == "mind-recall":
            out.append(words[1:])
    return out


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_commands_parse_with_the_real_cli(services: dict[str, Any], name: str) -> None:
    lines = _cli_lines(services[name]["command"])
    assert lines, name
    parser = build_parser()
    for args in lines:
        parser.parse_args(args)  # SystemExit on an unknown subcommand or option
    first = lines[0][:2]
    expected = {"worker": ["worker"], "item-writer": ["items", "write"]}.get(name)
    if expected:
        assert first[: len(expected)] == expected


def test_prometheus_scrapes_the_app_services(services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    mounts = _mounts(prom)
    assert mounts["/etc/prometheus"] == "./config/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["rules.yml"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job, service in (("mind-recall-worker", "worker"), ("mind-recall-items", "item-writer")):
        sd = jobs[job]["dns_sd_configs"][0]
        assert sd["names"] == [service]
        assert str(sd["port"]) == _env(services[service])["MIND_RECALL__METRICS__PORT"]
        assert str(sd["port"]) in {str(p) for p in services[service]["expose"]}


def test_grafana_is_provisioned(services: dict[str, Any]) -> None:
    mounts = _mounts(services["grafana"])
    assert mounts["/etc/grafana/provisioning"] == "./config/grafana/provisioning"
    assert (ROOT / "config/grafana/provisioning/datasources/prometheus.yml").is_file()
    ds = yaml.safe_load((ROOT / "config/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_docker_compose_config_accepts_the_file() -> None:
    """Only where the Docker Compose v2 plugin is installed (it validates offline, no engine needed)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    r = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--profile", "demo", "config", "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
