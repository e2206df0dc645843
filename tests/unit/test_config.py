"""Settings from the environment: defaults, derived ports, and refusals that say what to fix."""

from __future__ import annotations

import pytest

from chatserver.config import DEV_SECRET, ConfigError, Settings

SECRET = "s" * 32


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
