"""docker-compose.yml, nginx.conf, deploy/upstream.conf and the scripts describe one cluster."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def chat_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if re.fullmatch(r"ws-\d+", name)}


def test_compose_has_the_protocols_services_and_ports() -> None:
    services = compose()["services"]
    assert {"redis", "kafka", "kafka-ui", "nginx"} <= set(services)
    assert "127.0.0.1:8080:8080" in services["nginx"]["ports"]
    assert "127.0.0.1:8090:8080" in services["kafka-ui"]["ports"]
    assert len(chat_services()) >= 2
    for name, svc in chat_services().items():
        env = svc["environment"]
        n = int(name.split("-")[1])
        assert env["SERVER_ID"] == name and int(env["PORT"]) == 8080 + n, name
        assert env["REDIS_URL"] == "redis://redis:6379/0" and env["KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])


def test_compose_nginx_uses_the_repositorys_config_and_an_upstream_of_its_servers() -> None:
    volumes = compose()["services"]["nginx"]["volumes"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in volumes
    assert "./deploy/upstream.conf:/etc/nginx/upstream.conf:ro" in volumes
    upstream = re.findall(r"^server (ws-\d+):(\d+)", (ROOT / "deploy/upstream.conf").read_text(), re.M)
    assert {(name, int(port)) for name, port in upstream} == {
        (name, int(svc["environment"]["PORT"])) for name, svc in chat_services().items()
    }


def test_nginx_conf_has_what_the_scripts_rewrite_and_include() -> None:
    conf = (ROOT / "nginx.conf").read_text()
    assert re.search(r"^\s*listen 8080;", conf, re.M), "scripts/lib.sh rewrites the 'listen 8080;' line"
    assert "include upstream.conf;" in conf
    assert conf.count("proxy_set_header Host $http_host;") == conf.count("proxy_pass "), "each location sets Host"


def test_compose_runs_the_kafka_version_the_scripts_run() -> None:
    lib = (ROOT / "scripts/lib.sh").read_text()
    version = re.search(r'KAFKA_VERSION="\$\{KAFKA_VERSION:-([0-9.]+)\}"', lib)
    assert version is not None
    assert compose()["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"


# --- Operating the cluster: profiles, the kafka3 override, monitoring, the systemd unit -------

KAFKA3_OVERRIDE = ROOT / "deploy/compose.kafka3.yml"
BROKERS = ("kafka-1", "kafka-2", "kafka-3")
HA_OVERRIDE = ROOT / "deploy/compose.ha.yml"
REDIS_NODES = tuple(f"redis-{n}" for n in range(1, 7))
PROFILES = {
    "kafka3": set(BROKERS),
    "ha": {*BROKERS, *REDIS_NODES, "redis-cluster-init"},
    "monitoring": {"prometheus", "grafana"},
}
# The keys of a service in the Compose specification that this project may use: a misspelt key
# ("healtcheck") would otherwise pass the YAML-level checks below.
SERVICE_KEYS = {
    "build", "command", "container_name", "depends_on", "deploy", "entrypoint", "environment",
    "env_file", "healthcheck", "image", "labels", "logging", "networks", "profiles", "ports", "pull_policy",
    "restart", "stop_grace_period", "stop_signal", "ulimits", "user", "volumes", "working_dir",
}  # fmt: skip


class _Override:
    """A value tagged ``!override`` (Compose 2.24.4+): replaces instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's merge tags, so the override file loads."""


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> _Override:
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    assert isinstance(node, yaml.ScalarNode)
    return _Override(loader.construct_scalar(node))


_ComposeLoader.add_constructor("!override", _construct_override)


def load_compose_file(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass
    return data


def merge(base: Any, over: Any) -> Any:
    """Compose's merge of an override file, as far as these files use it: mappings merge key by
    key, sequences append (profiles, ports), ``!override`` replaces, scalars replace."""
    if isinstance(over, _Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else merge(None, value)
        return out
    if isinstance(base, list) and isinstance(over, list):
        return base + [item for item in over if item not in base]
    return over


def compose_with_kafka3() -> dict[str, Any]:
    merged: dict[str, Any] = merge(compose(), load_compose_file(KAFKA3_OVERRIDE))
    return merged


def enabled(services: dict[str, Any], profiles: set[str]) -> set[str]:
    return {name for name, svc in services.items() if not svc.get("profiles") or set(svc["profiles"]) & profiles}


def depends_on(svc: dict[str, Any]) -> set[str]:
    deps = svc.get("depends_on", {})
    return set(deps) if isinstance(deps, dict | list) else set()


@functools.cache
def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# Each way the files are meant to be combined: (extra -f files, profiles).
COMPOSE_VARIANTS = [
    ((), ()),
    ((), ("kafka3",)),
    ((), ("monitoring",)),
    ((), ("kafka3", "monitoring")),
    (("deploy/compose.kafka3.yml",), ("kafka3",)),
    (("deploy/compose.kafka3.yml",), ("kafka3", "monitoring")),
    ((), ("ha",)),
    (("deploy/compose.ha.yml",), ("ha",)),
    (("deploy/compose.ha.yml",), ("ha", "monitoring")),
]


@pytest.mark.parametrize(("extra_files", "profiles"), COMPOSE_VARIANTS)
def test_compose_files_are_valid_for_every_profile(extra_files: tuple[str, ...], profiles: tuple[str, ...]) -> None:
    """`docker compose config -q` where the compose plugin is installed (it needs no engine);
    PyYAML-level checks always. Never skipped: machines without the plugin (this project's
    development machines and CI have the docker CLI but not its compose plugin) still get the
    structural checks, which catch what the plugin would and the conventions it would not."""
    if docker_compose_available():
        args = ["docker", "compose", "-f", "docker-compose.yml"]
        for extra in extra_files:
            args += ["-f", extra]
        for profile in profiles:
            args += ["--profile", profile]
        env = {**os.environ, "CHAT_SECRET": "x" * 32}
        done = subprocess.run([*args, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    data = compose()
    for extra in extra_files:
        data = merge(data, load_compose_file(ROOT / extra))
    assert {key for key in data if not key.startswith("x-")} <= {"services", "volumes", "networks", "name"}
    services: dict[str, Any] = data["services"]
    active = enabled(services, set(profiles))
    declared_volumes = set(data.get("volumes") or {})
    for name in active:
        svc = services[name]
        assert set(svc) <= SERVICE_KEYS, (name, set(svc) - SERVICE_KEYS)
        assert "image" in svc or "build" in svc, name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        for dep in depends_on(svc):
            assert dep in services, f"{name} depends on unknown {dep}"
            assert dep in active, f"{name} depends on {dep}, disabled with profiles {profiles}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, volume)
            else:
                assert source in declared_volumes, (name, volume)
    # Every published host port is published once.
    published = [p.split(":")[1] for name in active for p in services[name].get("ports", [])]
    assert len(published) == len(set(published)), published


def test_every_service_restarts_has_a_health_check_and_resource_limits() -> None:
    for name, svc in compose()["services"].items():
        if name.endswith("-init"):  # a one-shot job (forms the Redis Cluster once), never restarted
            assert svc.get("restart") == "no" and not svc.get("ports"), name
            continue
        assert svc.get("restart") == "unless-stopped", name
        assert svc.get("healthcheck", {}).get("test"), name
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert {"cpus", "memory"} <= set(limits), name


def test_profiles_hold_the_optional_services_only() -> None:
    services = compose()["services"]
    for profile, names in PROFILES.items():
        assert {name for name, svc in services.items() if profile in svc.get("profiles", [])} == names
    always = {name for name, svc in services.items() if not svc.get("profiles")}
    assert always == {"redis", "kafka", "kafka-ui", "nginx", *chat_services()}
    # kafka-ui stays on 8090 (docs/PROTOCOL.md), also with the override.
    assert "127.0.0.1:8090:8080" in compose_with_kafka3()["services"]["kafka-ui"]["ports"]


def test_kafka3_profile_is_a_replicated_kraft_quorum() -> None:
    services = compose()["services"]
    envs = {name: services[name]["environment"] for name in BROKERS}
    voters = {f"{n}@kafka-{n}:9093" for n in (1, 2, 3)}
    assert {str(env["KAFKA_NODE_ID"]) for env in envs.values()} == {"1", "2", "3"}
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    version = services["kafka"]["image"]
    for name, env in envs.items():
        svc = services[name]
        assert svc["image"] == version == "apache/kafka:4.1.1", name
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters, name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092", name
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3, name
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2, name
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3, name
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == 3, name
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2, name
        assert svc["volumes"] == [f"{name}-data:{env['KAFKA_LOG_DIRS']}"], name
    assert len({tuple(services[name]["volumes"]) for name in BROKERS}) == 3


def test_kafka3_override_points_every_chat_server_at_the_three_brokers() -> None:
    override = load_compose_file(KAFKA3_OVERRIDE)["services"]
    assert set(chat_services()) <= set(override), "each ws-N service needs its lines in the override"
    merged = compose_with_kafka3()["services"]
    brokers = {f"{name}:9092" for name in BROKERS}
    for name in chat_services():
        assert set(merged[name]["environment"]["KAFKA_BOOTSTRAP"].split(",")) == brokers, name
        assert depends_on(merged[name]) == {"redis", *BROKERS}, name
        assert merged[name]["environment"]["SERVER_ID"] == name  # the rest of the environment is kept
    assert set(merged["kafka-ui"]["environment"]["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"].split(",")) == brokers
    assert "kafka" not in enabled(merged, {"kafka3", "monitoring"}), "the single broker stays out"


def unit_settings(text: str) -> dict[str, list[str]]:
    """A systemd unit's settings by key (a key may repeat), sections ignored."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_runs_one_server_with_a_graceful_stop_and_hardening() -> None:
    text = (ROOT / "deploy/chatserver.service").read_text()
    assert {"[Unit]", "[Service]", "[Install]"} <= set(re.findall(r"^\[\w+\]", text, re.M))
    unit = unit_settings(text)
    assert unit["EnvironmentFile"] == ["/etc/chatserver/ws-1.env"]
    assert unit["ExecStart"][0].endswith("/bin/python -m chatserver")
    assert unit["Restart"] == ["on-failure"]
    assert unit["KillSignal"] == ["SIGTERM"] and unit["TimeoutStopSec"] == ["30"]
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert unit[key] == ["true"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["LimitNOFILE"] == ["65536"]
    assert unit.get("DynamicUser") == ["true"] or "User" in unit


def test_env_example_lists_every_configuration_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.M))
    assert len(documented) >= 20
    example = (ROOT / "deploy/ws-1.env.example").read_text()
    listed = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", example, re.M))
    assert documented <= listed, documented - listed
    config = (ROOT / "chatserver/config.py").read_text()
    assert {name for name in listed if f'"{name}"' not in config} == set(), "listed but not read by config.py"
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", example, re.M))
    assert values["SERVER_ID"] == "ws-1" and values["PORT"] == "8081"


# --- Docker: one image, pinned images, two Kafka listeners, production by default --------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``path`` out of the build context (its patterns as this file
    uses them: a folder or file name, ``**/`` prefixes)."""
    parts = Path(path).parts
    for pattern in patterns:
        pattern = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(part, pattern) for part in parts) or fnmatch.fnmatch(path, pattern):
            return True
        if path.startswith(pattern.rstrip("/") + "/"):
            return True
    return False


def test_dockerignore_keeps_local_state_out_and_what_the_image_needs_in() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    for local in (".git", ".venv", ".cache", ".run", "test-output", ".env", "chatserver/__pycache__/x.pyc"):
        assert _ignored(local, patterns), local
    copied = re.findall(r"^COPY ([^\n]+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    sources = [src for line in copied for src in line.split()]
    assert {"requirements.txt", "pyproject.toml", "chatserver", "templates", "static"} <= set(sources)
    for source in sources:
        assert not _ignored(source, patterns), f"the Dockerfile copies {source}, which .dockerignore leaves out"


def test_one_chat_image_is_built_once_and_run_by_every_chat_server() -> None:
    services = compose()["services"]
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == ["ws-1"], builders
    images = {svc["image"] for svc in chat_services().values()}
    assert len(images) == 1, images
    (image,) = images
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None and image == f"chat-server:{version.group(1)}"
    assert all(svc.get("pull_policy") == "never" for svc in chat_services().values()), "a local image, never pulled"


def test_every_image_is_pinned_and_kafka_ui_is_the_maintained_fork() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        image = svc["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("latest", "main", ""), (name, image)
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"
    assert re.fullmatch(r"(ghcr\.io/)?kafbat/kafka-ui:v\d+\.\d+\.\d+", services["kafka-ui"]["image"])
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert base is not None and re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base.group(1)), "the base image is pinned"


def _listeners(value: str) -> dict[str, str]:
    return dict(item.split("://", 1) for item in value.split(","))


def test_kafka_is_reachable_from_the_containers_and_from_the_host() -> None:
    kafka = compose()["services"]["kafka"]
    env = kafka["environment"]
    listeners, advertised = _listeners(env["KAFKA_LISTENERS"]), _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols) and set(advertised) <= set(listeners)
    containers = [name for name, addr in advertised.items() if addr == "kafka:9092"]
    host = [name for name, addr in advertised.items() if addr == "127.0.0.1:9092"]
    assert containers and host and containers != host, advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == containers[0]
    (published,) = kafka["ports"]
    assert published == f"127.0.0.1:9092:{listeners[host[0]].rsplit(':', 1)[1]}", "the host port reaches HOST"
    assert "localhost:9092" in " ".join(kafka["healthcheck"]["test"]), "the health check uses the containers' one"


def test_compose_is_production_unless_the_operator_says_otherwise() -> None:
    for name, svc in chat_services().items():
        env = svc["environment"]
        assert env["CHAT_DEV"] == "${CHAT_DEV:-0}", name
        assert env["CHAT_SECRET"].startswith("${CHAT_SECRET:?"), f"{name}: compose refuses to start without a secret"
        assert "CHAT_DEV_LOGIN" not in env, name
    example = dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    assert example["CHAT_SECRET"] == "" and example["CHAT_DEV"] == "0"
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert interpolated <= set(example), interpolated - set(example)
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_chat_servers_trust_the_network_nginx_is_on_and_nothing_wider() -> None:
    data = compose()
    (subnet,) = [ipaddress.ip_network(c["subnet"]) for c in data["networks"]["default"]["ipam"]["config"]]
    assert subnet.is_private and subnet.prefixlen >= 16
    assert "networks" not in data["services"]["nginx"], "nginx is on the default network"
    for name, svc in chat_services().items():
        trusted = [ipaddress.ip_network(item) for item in svc["environment"]["CHAT_TRUSTED_PROXIES"].split(",")]
        assert subnet in trusted, name
        assert all(net.is_loopback or net == subnet for net in trusted), (name, trusted)


def lib_default(name: str) -> str:
    """The default that scripts/lib.sh gives ``name`` (``NAME="${NAME:-default}"``)."""
    found = re.search(rf'^{name}="\$\{{{name}:-([^}}]*)\}}"', (ROOT / "scripts/lib.sh").read_text(), re.M)
    assert found, f"scripts/lib.sh has no default for {name}"
    return found.group(1)


def test_the_ha_profile_is_the_topology_of_up_sh_ha() -> None:
    services = compose()["services"]
    timeout = lib_default("REDIS_CLUSTER_NODE_TIMEOUT_MS")
    for name in REDIS_NODES:
        command = services[name]["command"]
        flags = dict(zip(command[1::2], command[2::2], strict=True))
        assert flags["--cluster-enabled"] == "yes" and flags["--cluster-node-timeout"] == timeout, name
        assert (flags["--appendonly"], flags["--appendfsync"]) == ("yes", "everysec"), name
        assert services[name]["image"] == services["redis"]["image"], name
    assert len({tuple(services[name]["volumes"]) for name in REDIS_NODES}) == 6
    init = " ".join(services["redis-cluster-init"]["command"])
    assert "--cluster-replicas 1" in init and all("redis-$$n" in init for _ in [0])
    assert set(depends_on(services["redis-cluster-init"])) == set(REDIS_NODES)
    # up.sh --ha: the same three brokers and six nodes, on the ports the issue names by default.
    assert lib_default("REDIS_CLUSTER_PORT") == "7000"
    assert lib_default("KAFKA_PORTS") == "$KAFKA_PORT $((KAFKA_PORT + 1)) $((KAFKA_PORT + 2))"
    assert lib_default("KAFKA_PORT") == "9092"
    lib = (ROOT / "scripts/lib.sh").read_text()
    assert 'KAFKA_REPLICATION="${KAFKA_REPLICATION:-3}"' in lib and 'KAFKA_MIN_INSYNC="${KAFKA_MIN_INSYNC:-2}"' in lib


def test_the_ha_override_points_every_server_at_the_cluster_and_the_three_brokers() -> None:
    merged = merge(compose(), load_compose_file(HA_OVERRIDE))["services"]
    for name in chat_services():
        env, deps = merged[name]["environment"], depends_on(merged[name])
        assert env["REDIS_URL"].startswith("redis+cluster://"), name
        assert {h.split(":")[0] for h in env["REDIS_URL"].removeprefix("redis+cluster://").split(",")} <= set(
            REDIS_NODES
        )
        assert env["KAFKA_BOOTSTRAP"] == ",".join(f"{b}:9092" for b in BROKERS), name
        assert deps == {"redis-cluster-init", *BROKERS}, name
    assert merged["redis"]["profiles"] == ["redis1"] and merged["kafka"]["profiles"] == ["kafka1"]
