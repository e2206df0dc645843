"""docker-compose.yml, nginx.conf, deploy/upstream.conf and the scripts describe one cluster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
