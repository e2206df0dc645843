"""Monitoring as deployed: Prometheus scrapes every chat server and loads the alert rules,
Grafana is provisioned from the repository, every panel and rule reads series the server
exports, and each panel is in the unit of its queries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import yaml

from chatserver.metrics import Metrics
from tests.unit.test_deploy import ROOT, chat_services, compose


def test_prometheus_scrapes_every_chat_server() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "chat"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {(group["labels"]["server"], target) for group in job["static_configs"] for target in group["targets"]}
    assert targets == {(name, f"{name}:{svc['environment']['PORT']}") for name, svc in chat_services().items()}
    prometheus = compose()["services"]["prometheus"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_is_provisioned_from_the_repository() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/chat.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    for panel in dashboard()["panels"]:
        for target in [panel, *panel["targets"]]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def defined_metric_names() -> set[str]:
    """The series names Prometheus sees from a chat server: what its registry exposes (the
    server's own metrics, chat_build_info, the process, GC and platform collectors), by the
    ``# TYPE`` lines, so labelled series without a sample yet count too (a counter's line already
    names its ``_total``; a histogram gets ``_bucket``, ``_sum`` and ``_count``)."""
    text = Metrics().render().decode()
    found = re.findall(r"^# TYPE (\S+) (\w+)$", text, re.M)
    assert len(found) >= 20, "the exposition no longer parses as expected"
    suffixes = {"histogram": ("_bucket", "_sum", "_count")}
    return {name + suffix for name, kind in found for suffix in suffixes.get(kind, ("",))}


METRIC = re.compile(r"\b(?:chat|process|python)_[a-z0-9_]+\b")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "deploy/grafana/dashboards/chat.json").read_text())
    return data


def test_dashboard_panels_query_metrics_the_server_defines() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    defined = defined_metric_names()
    used: set[str] = set()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(METRIC.findall(target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= defined, (panel["title"], names - defined)
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            used |= names
    wanted = {
        "chat_connections", "chat_local_users", "chat_frames_in_total", "chat_messages_routed_total",
        "chat_deliveries_total", "chat_errors_total", "chat_publish_seconds_bucket",
        "chat_delivery_seconds_bucket", "chat_bus_publish_failures_total", "chat_registry_failures_total",
        "chat_consumer_lag", "chat_connections_opened_total", "chat_connections_closed_total",
        "chat_handshake_refusals_total", "chat_messages_shed_total", "chat_backlog_oldest_seconds",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "chat_ready",
    }  # fmt: skip
    assert wanted <= used, wanted - used
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(chat_publish_seconds_bucket" in exprs


def expected_unit(expr: str) -> str:
    """The unit a query's values are in: a percentage, a duration, bytes, a rate, or a count."""
    if expr.startswith("100 *"):
        return "percent"
    if "histogram_quantile" in expr or ("_seconds" in expr and "rate(" not in expr):
        return "s"
    if "_bytes" in expr:
        return "bytes"
    if "rate(" in expr:
        return "ops"
    return "short"


def test_dashboard_panels_are_in_the_units_of_their_queries() -> None:
    for panel in dashboard()["panels"]:
        units = {expected_unit(target["expr"]) for target in panel["targets"]}
        assert len(units) == 1, f"{panel['title']} mixes {units}: one unit per panel"
        assert panel["fieldConfig"]["defaults"]["unit"] == units.pop(), panel["title"]
    grid = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard()["panels"]]
    assert len(grid) == len(set(grid)), "two panels in one place"


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metrics_in(expr: str) -> set[str]:
    """The series a PromQL expression reads: its identifiers less label matchers and values,
    ranges, grouping labels, functions and keywords."""
    bare = re.sub(r"\{[^}]*\}|\[[^]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    tokens = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\(?)", bare)
    return {name for name, call in tokens if not call} - PROMQL_WORDS


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((ROOT / "deploy/alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_prometheus_loads_the_alert_rules_from_the_repository() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "./deploy/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose()["services"]["prometheus"]["volumes"]
    if shutil.which("promtool"):
        done = subprocess.run(["promtool", "check", "rules", str(ROOT / "deploy/alerts.yml")], capture_output=True)
        assert done.returncode == 0, done.stderr


def test_alert_rules_cover_the_failures_and_read_only_series_the_server_exports() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    wanted = {
        "ChatServerNotReady",
        "ChatConsumerLag",
        "ChatShedding",
        "ChatErrorRate",
        "ChatRedisDown",
        "ChatKafkaDown",
    }
    assert wanted <= set(names), wanted - set(names)
    exported = defined_metric_names() | {"up"}  # `up`: Prometheus's own, per scrape target
    for rule in rules:
        expr = rule["expr"]
        read = metrics_in(expr)
        assert read and read <= exported, (rule["alert"], read - exported)
        assert expr.count("(") == expr.count(")"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_promql_reader_finds_series_and_skips_the_rest() -> None:
    expr = 'sum by (server) (rate(chat_errors_total{code="internal"}[5m])) / sum(rate(up[1m])) > 0.01'
    assert metrics_in(expr) == {"chat_errors_total", "up"}
