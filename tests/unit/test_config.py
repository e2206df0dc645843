"""Settings from the environment: defaults, derived ports, and refusals that say what to fix."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chatserver.config import DEV_SECRET, ConfigError, Settings

SECRET = "s" * 32
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "chatserver" / "config.py"


def test_defaults_follow_the_protocol() -> None:
    s = Settings.from_env({"CHAT_SECRET": SECRET})
    assert (s.server_id, s.port, s.redis_url, s.kafka_bootstrap) == (
        "ws-1",
        8081,
        "redis://127.0.0.1:6379/0",
        "127.0.0.1:9092",
    )
    assert s.dev_login is False and s.allowed_origins == ()


def test_dev_login_is_on_in_development_mode_only_unless_asked_for() -> None:
    """The contract: on by default only with CHAT_DEV=1; otherwise off unless CHAT_DEV_LOGIN=1."""
    assert Settings.from_env({"CHAT_DEV": "1"}).dev_login is True
    assert Settings.from_env({"CHAT_DEV": "1", "CHAT_DEV_LOGIN": "0"}).dev_login is False
    assert Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_DEV_LOGIN": "1"}).dev_login is True


def test_port_follows_the_server_number_unless_set() -> None:
    assert Settings.from_env({"CHAT_SECRET": SECRET, "SERVER_ID": "ws-7"}).port == 8087
    assert Settings.from_env({"CHAT_SECRET": SECRET, "SERVER_ID": "ws-7", "PORT": "9000"}).port == 9000
    assert Settings.from_env({"CHAT_SECRET": SECRET, "SERVER_ID": "edge-a"}).port == 8081


def test_missing_secret_is_refused_outside_dev_mode() -> None:
    with pytest.raises(ConfigError, match="CHAT_SECRET"):
        Settings.from_env({})
    with pytest.raises(ConfigError, match="too short"):
        Settings.from_env({"CHAT_SECRET": "short"})
    assert Settings.from_env({"CHAT_DEV": "1"}).secret == DEV_SECRET


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "-1"}, "PORT"),
        ({"SERVER_ID": "a b"}, "SERVER_ID"),
        ({"CHAT_BACKEND": "mongo"}, "CHAT_BACKEND"),
        ({"CHAT_DEV_LOGIN": "maybe"}, "CHAT_DEV_LOGIN"),
        ({"CHAT_HEARTBEAT_S": "10", "CHAT_SESSION_TTL_S": "15"}, "CHAT_HEARTBEAT_S"),
        ({"CHAT_SHED_AFTER_MS": "-1"}, "CHAT_SHED_AFTER_MS"),
        ({"CHAT_SHED_AFTER_MS": "soon"}, "CHAT_SHED_AFTER_MS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env({"CHAT_SECRET": SECRET, **env})


def test_allowed_origins_is_a_comma_list() -> None:
    s = Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_ALLOWED_ORIGINS": "https://a.example, https://b.example,"})
    assert s.allowed_origins == ("https://a.example", "https://b.example")


def test_load_shedding_waits_3_s_by_default_and_0_turns_it_off() -> None:
    assert Settings.from_env({"CHAT_SECRET": SECRET}).shed_after_ms == 3000
    assert Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_SHED_AFTER_MS": "0"}).shed_after_ms == 0
    assert Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_SHED_AFTER_MS": "750"}).shed_after_ms == 750


def test_stores_on_a_redis_cluster_wait_for_one_replica_by_default_and_0_turns_it_off() -> None:
    assert Settings.from_env({"CHAT_SECRET": SECRET}).redis_wait_replicas == 1
    settings = Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_REDIS_WAIT_REPLICAS": "0", "CHAT_REDIS_WAIT_MS": "50"})
    assert (settings.redis_wait_replicas, settings.redis_wait_ms) == (0, 50)
    assert "CHAT_REDIS_WAIT_REPLICAS" in _refused({"CHAT_REDIS_WAIT_REPLICAS": "-1"})
    assert "CHAT_REDIS_WAIT_MS" in _refused({"CHAT_REDIS_WAIT_MS": "0"})
    assert "takes no ?options" in _refused({"REDIS_URL": "redis+cluster://127.0.0.1:7000?ssl=true"})


# ------------------------------------------------------------------ every kind of value, checked at start


def _refused(env: dict[str, str]) -> str:
    """The one-line message a refused environment gets (with a valid secret unless ``env`` sets one)."""
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"CHAT_SECRET": SECRET, **env})
    message = str(refused.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def test_log_level_is_a_level_name_in_any_case() -> None:
    assert Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    message = _refused({"CHAT_LOG_LEVEL": "loud"})
    assert message.startswith("CHAT_LOG_LEVEL='loud'") and "DEBUG, INFO, WARNING, ERROR, CRITICAL" in message
    assert _refused({"CHAT_LOG_FORMAT": "xml"}) == "CHAT_LOG_FORMAT='xml': use one of text, json"


@pytest.mark.parametrize("port", ["0", "65536", "-80", "80.5", "eighty"])
def test_a_port_is_1_to_65535(port: str) -> None:
    assert _refused({"PORT": port}).startswith(f"PORT={port!r}")


def test_port_bounds_are_accepted() -> None:
    assert Settings.from_env({"CHAT_SECRET": SECRET, "PORT": "65535"}).port == 65535
    assert Settings.from_env({"CHAT_SECRET": SECRET, "PORT": "1"}).port == 1


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:secret@redis:6379/2",
        "redis://redis",
        "rediss://redis.example:6380/0?ssl_cert_reqs=required",
        "unix:///run/redis/redis.sock",
        "redis+sentinel://s1:26379,s2:26379/mymaster/0",
        "redis+sentinel://:pw@s1:26379/mymaster",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    ],
)
def test_redis_url_takes_every_scheme_the_client_follows(url: str) -> None:
    assert Settings.from_env({"CHAT_SECRET": SECRET, "REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://redis:6379", "the scheme must be one of redis://"),
        ("127.0.0.1:6379", "the scheme must be one of"),
        ("redis://redis:99999/0", "use redis://"),
        ("redis://redis:6379/zero", "use redis://"),
        ("redis+sentinel://s1:26379", "/service"),
        ("redis+sentinel://s1/mymaster", "use redis+sentinel://"),
        ("redis+cluster://c1:7000/0", "use redis+cluster://"),
        ("unix://redis.sock", "use unix:///"),
    ],
)
def test_a_redis_url_the_client_cannot_follow_is_refused(url: str, needle: str) -> None:
    message = _refused({"REDIS_URL": url})
    assert message.startswith(f"REDIS_URL={url!r}") and needle in message


def test_kafka_bootstrap_is_a_list_of_host_port() -> None:
    s = Settings.from_env({"CHAT_SECRET": SECRET, "KAFKA_BOOTSTRAP": "k1:9092, k2:9092,[::1]:9094"})
    assert s.kafka_bootstrap == "k1:9092,k2:9092,[::1]:9094"
    for bad in ("k1", "k1:0", "k1:9092,", "kafka://k1:9092"):
        assert _refused({"KAFKA_BOOTSTRAP": bad}).startswith("KAFKA_BOOTSTRAP=")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_not_a_number_and_infinity_are_refused(value: str) -> None:
    for name in ("CHAT_GAP_WAIT_MS", "CHAT_SHED_AFTER_MS", "CHAT_SESSION_TTL_S", "CHAT_CONN_RATE_PER_S"):
        assert _refused({name: value}) == f"{name}={value!r}: expected a finite number"


@pytest.mark.parametrize("name", ["CHAT_HISTORY_MIN", "CHAT_DEDUPE_S", "CHAT_MAX_CONNS_PER_IP", "CHAT_TOKEN_TTL_S"])
def test_negative_numbers_are_refused(name: str) -> None:
    assert "expected a positive number" in _refused({name: "-5"})


def test_zero_is_off_only_where_it_means_off() -> None:
    s = Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_USER_RATE_PER_S": "0", "CHAT_RESUME_WAIT_MS": "0"})
    assert (s.user_rate_per_s, s.resume_wait_ms) == (0, 0)
    assert _refused({"CHAT_HISTORY_MAX": "0"}) == "CHAT_HISTORY_MAX='0': expected a positive number"


def test_trusted_proxies_are_addresses_or_cidr_networks() -> None:
    s = Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_TRUSTED_PROXIES": "127.0.0.1, 172.28.0.0/16,fd00::/8"})
    assert s.trusted_proxies == ("127.0.0.1", "172.28.0.0/16", "fd00::/8")
    assert "has host bits set: the network is 172.28.0.0/16" in _refused({"CHAT_TRUSTED_PROXIES": "172.28.0.1/16"})
    assert "'nginx' is neither an IP address nor a CIDR network" in _refused({"CHAT_TRUSTED_PROXIES": "nginx"})
    assert "CHAT_TRUSTED_PROXIES" in _refused({"CHAT_TRUSTED_PROXIES": "10.0.0.0/33"})


def test_a_production_secret_is_long_and_not_a_published_one() -> None:
    assert "at least 32 random bytes" in _refused({"CHAT_SECRET": "x" * 31})
    example = "change-me-to-the-output-of-openssl-rand-base64-32"  # deploy/ws-1.env.example's placeholder
    assert _refused({"CHAT_SECRET": example}).startswith("CHAT_SECRET is a published example value")
    assert _refused({"CHAT_SECRET": DEV_SECRET}).startswith("CHAT_SECRET is a published example value")
    assert Settings.from_env({"CHAT_SECRET": "x" * 32}).secret == "x" * 32
    assert Settings.from_env({"CHAT_DEV": "1", "CHAT_SECRET": "short"}).secret == "short", "dev mode allows any"


def test_admin_token_is_long_and_not_a_published_one() -> None:
    assert "too short" in _refused({"CHAT_ADMIN_TOKEN": "abc"})
    assert "published example value" in _refused({"CHAT_ADMIN_TOKEN": "changeme-changeme"})


def test_allowed_origins_are_origins() -> None:
    for bad in ("chat.example", "https://chat.example/path", "ftp://chat.example"):
        assert "is not an origin" in _refused({"CHAT_ALLOWED_ORIGINS": bad})


def test_host_is_an_address_or_a_name() -> None:
    for good in ("0.0.0.0", "::", "chat-1.internal"):
        assert Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_HOST": good}).host == good
    for bad in ("http://0.0.0.0", "0.0.0.0:8081", "two words"):
        assert _refused({"CHAT_HOST": bad}).startswith("CHAT_HOST=")


def test_token_url_is_a_path_here_or_an_http_url() -> None:
    for good in ("", "/auth/chat-token", "https://app.example/chat/token", "http://127.0.0.1:9000/t"):
        assert Settings.from_env({"CHAT_SECRET": SECRET, "CHAT_TOKEN_URL": good}).token_url == good
    for bad in ("//evil.example/t", "javascript:alert(1)", "app.example/token"):
        assert _refused({"CHAT_TOKEN_URL": bad}).startswith("CHAT_TOKEN_URL=")


def test_booleans_are_1_or_0() -> None:
    assert _refused({"CHAT_ACCOUNTS": "2"}) == "CHAT_ACCOUNTS='2': use 1 or 0"


# ------------------------------------------------------------------ the process: one line, no traceback


def _run_server(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "REDIS_URL", "KAFKA_"))}
    return subprocess.run(
        [sys.executable, "-m", "chatserver"],
        cwd=ROOT,
        env={**keep, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_m_chatserver_with_a_bad_value_says_so_in_one_line_and_exits_2() -> None:
    done = _run_server({"CHAT_SECRET": SECRET, "CHAT_BACKEND": "memory", "CHAT_GAP_WAIT_MS": "nan"})
    assert done.returncode == 2
    assert done.stderr == "chatserver: configuration error: CHAT_GAP_WAIT_MS='nan': expected a finite number\n"
    assert done.stdout == ""


def test_python_m_chatserver_in_production_without_a_strong_secret_refuses_to_start() -> None:
    done = _run_server({"CHAT_BACKEND": "memory", "CHAT_SECRET": "change-me-please-change-me-please-1"})
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "CHAT_SECRET is a published example value" in done.stderr


def test_python_m_chatserver_on_a_taken_port_says_which_setting_moves_it() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = _run_server({"CHAT_BACKEND": "memory", "CHAT_DEV": "1", "PORT": str(port)})
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"chatserver: cannot listen on 127.0.0.1:{port}: ") and "set PORT" in last
    assert "Traceback" not in done.stderr


def test_docs_configuration_lists_every_variable_config_reads() -> None:
    read = set(re.findall(r'"((?:CHAT_|SERVER_ID|PORT|REDIS_URL|KAFKA_BOOTSTRAP)[A-Z_]*)"', CONFIG.read_text()))
    table = (ROOT / "docs" / "CONFIGURATION.md").read_text().split("## Every setting", 1)[1]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \| [^|]+ \| [^|]+ \|$", table, re.MULTILINE))
    assert len(read) > 40
    assert read - documented == set(), "read by config.py, missing from docs/CONFIGURATION.md"
    assert documented - read == set(), "in docs/CONFIGURATION.md, not read by config.py"
