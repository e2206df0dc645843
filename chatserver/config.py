"""Settings: every knob of a chat server, its environment variable and its default.

``Settings.from_env()`` is called once, at the entry point; everything else receives the
frozen object. A bad value raises ``ConfigError`` with a message that names the variable
and says what is expected, so an operator can fix it without reading code.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_network
from urllib.parse import urlsplit

#: Used only with CHAT_DEV=1 when CHAT_SECRET is unset: tokens signed with it are forgeable.
DEV_SECRET = "dev-only-insecure-secret-set-CHAT_SECRET-in-production"
MIN_SECRET_BYTES = 32
#: Values published in this project's files (the development secret, the examples' placeholders):
#: known to everyone, so never a production secret or admin token, whatever their length.
_PUBLISHED = re.compile(r"change.?me|dev-only-insecure", re.IGNORECASE)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: REDIS_URL schemes: a single Redis (TLS with rediss, a socket with unix), Sentinel, Redis Cluster.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# \A...\Z and fullmatch(): "$" matches before a final newline too.
_SERVER_ID_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
_PREFIX_RE = re.compile(r"\A[A-Za-z0-9_.-]{0,64}\Z")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """One chat server's configuration. Field comments name the environment variable."""

    server_id: str = "ws-1"  # SERVER_ID
    host: str = "127.0.0.1"  # CHAT_HOST
    port: int = 8081  # PORT (default: 8080 + N for SERVER_ID ws-N)
    redis_url: str = "redis://127.0.0.1:6379/0"  # REDIS_URL
    # On a Redis Cluster a message is acked only once this many replicas of its shard have it
    # (WAIT), within CHAT_REDIS_WAIT_MS: a failover then loses no acked message. 0: do not wait.
    redis_wait_replicas: int = 1  # CHAT_REDIS_WAIT_REPLICAS
    redis_wait_ms: int = 200  # CHAT_REDIS_WAIT_MS
    kafka_bootstrap: str = "127.0.0.1:9092"  # KAFKA_BOOTSTRAP
    backend: str = "real"  # CHAT_BACKEND: real (Redis + Kafka) or memory (single node)
    name_prefix: str = ""  # CHAT_PREFIX: prefix of every Redis key and Kafka topic/group
    secret: str = DEV_SECRET  # CHAT_SECRET
    dev: bool = False  # CHAT_DEV: allow the built-in development secret
    dev_login: bool = False  # CHAT_DEV_LOGIN: POST /api/login issues tokens (default: CHAT_DEV's value)
    accounts: bool = False  # CHAT_ACCOUNTS: built-in accounts, POST /api/signup and password login
    allowed_origins: tuple[str, ...] = ()  # CHAT_ALLOWED_ORIGINS (comma list; empty: same host)
    token_ttl_s: int = 24 * 3600  # CHAT_TOKEN_TTL_S
    session_ttl_s: float = 15.0  # CHAT_SESSION_TTL_S: registry entries expire after this
    heartbeat_s: float = 5.0  # CHAT_HEARTBEAT_S: how often entries are refreshed
    poll_interval_ms: float = 2.0  # CHAT_POLL_MS: period of the Kafka consumer callback
    kafka_linger_ms: float = 1.0  # CHAT_KAFKA_LINGER_MS: producer batching delay
    kafka_fetch_wait_ms: int = 100  # CHAT_KAFKA_FETCH_WAIT_MS: longest the broker holds a fetch for more
    kafka_fetch_min_bytes: int = 1  # CHAT_KAFKA_FETCH_MIN_BYTES: bytes a fetch waits for (up to the wait)
    kafka_send_timeout_s: float = 30.0  # CHAT_KAFKA_SEND_TIMEOUT_S: a send fails after this
    kafka_batch: bool = True  # CHAT_KAFKA_BATCH: one record per server and loop turn (0 for older servers)
    history_min: int = 1000  # CHAT_HISTORY_MIN: a channel keeps at least this many messages,
    history_keep_s: float = 24 * 3600  # CHAT_HISTORY_KEEP_S: or all younger than this,
    history_max: int = 10_000  # CHAT_HISTORY_MAX: but never more than this
    dedupe_s: float = 300.0  # CHAT_DEDUPE_S: a resent message (same cid and text) is stored once
    channel_idle_s: float = (
        30 * 24 * 3600.0
    )  # CHAT_CHANNEL_IDLE_S: a channel without a new message this long is deleted
    conn_rate_per_s: float = 50.0  # CHAT_CONN_RATE_PER_S: frames per second per connection (0: off)
    conn_burst: int = 100  # CHAT_CONN_BURST: ... with bursts up to this
    user_rate_per_s: int = 100  # CHAT_USER_RATE_PER_S: messages per second per user, cluster-wide (0: off)
    presence_max_online: int = 1000  # CHAT_PRESENCE_MAX_ONLINE: no online/offline to all beyond (0: no limit)
    shed_after_ms: float = 3000.0  # CHAT_SHED_AFTER_MS: refuse new messages while one is unacked this long (0: never)
    resume_wait_ms: float = 1000.0  # CHAT_RESUME_WAIT_MS: after welcome, hold live messages this long for resume
    gap_wait_ms: float = 250.0  # CHAT_GAP_WAIT_MS: wait this long for a missing offset, then read it from history
    flood_strikes: int = 200  # CHAT_FLOOD_STRIKES: net refused frames before closing with 1008
    max_sessions_per_user: int = 20  # CHAT_MAX_SESSIONS_PER_USER: per server
    max_conns_per_ip: int = 500  # CHAT_MAX_CONNS_PER_IP: per server
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")  # CHAT_TRUSTED_PROXIES: may set X-Real-IP
    max_send_buffer: int = 1 << 20  # CHAT_MAX_SEND_BUFFER: unread bytes before a client is dropped
    max_frame_bytes: int = 64 * 1024  # fixed by the protocol (close 1009 above it)
    ping_interval_s: float = 25.0  # CHAT_WS_PING_S: WebSocket pings keep proxies from timing out
    log_level: str = "INFO"  # CHAT_LOG_LEVEL
    log_format: str = "text"  # CHAT_LOG_FORMAT: text (for a terminal) or json (one object a line)
    admin_token: str = ""  # CHAT_ADMIN_TOKEN: enables /admin for whoever presents it (off when empty)
    token_url: str = ""  # CHAT_TOKEN_URL: where the page fetches its token (the operator's application)
    token_leeway_s: float = 0.0  # CHAT_TOKEN_LEEWAY_S: clock skew allowed past a token's exp

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``env`` (usually ``os.environ``); raise ``ConfigError``."""
        server_id = env.get("SERVER_ID", cls.server_id)
        if not _SERVER_ID_RE.fullmatch(server_id):
            raise ConfigError(f"SERVER_ID={server_id!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        prefix = env.get("CHAT_PREFIX", "")
        if not _PREFIX_RE.fullmatch(prefix):
            raise ConfigError(f"CHAT_PREFIX={prefix!r}: use up to 64 of A-Z a-z 0-9 _ . -")
        backend = env.get("CHAT_BACKEND", cls.backend)
        if backend not in ("real", "memory"):
            raise ConfigError(f"CHAT_BACKEND={backend!r}: use 'real' (Redis+Kafka) or 'memory'")
        dev = _bool(env, "CHAT_DEV", False)
        secret = env.get("CHAT_SECRET", "")
        if not secret:
            if not dev:
                raise ConfigError(
                    "CHAT_SECRET is not set: set it to a random string of at least "
                    f"{MIN_SECRET_BYTES} bytes (or CHAT_DEV=1 for a local, insecure default)"
                )
            secret = DEV_SECRET
        elif len(secret.encode()) < MIN_SECRET_BYTES and not dev:
            raise ConfigError(
                f"CHAT_SECRET is too short: use at least {MIN_SECRET_BYTES} random bytes (openssl rand -base64 32)"
            )
        elif _PUBLISHED.search(secret) and not dev:
            raise ConfigError("CHAT_SECRET is a published example value: use your own (openssl rand -base64 32)")
        origins = _origins(env, "CHAT_ALLOWED_ORIGINS")
        settings = cls(
            server_id=server_id,
            host=_host(env, "CHAT_HOST", cls.host),
            port=_port(env, "PORT", _default_port(server_id)),
            redis_url=_redis_url(env, "REDIS_URL", cls.redis_url),
            redis_wait_replicas=_int(env, "CHAT_REDIS_WAIT_REPLICAS", cls.redis_wait_replicas, allow_zero=True),
            redis_wait_ms=_int(env, "CHAT_REDIS_WAIT_MS", cls.redis_wait_ms),
            kafka_bootstrap=_bootstrap(env, "KAFKA_BOOTSTRAP", cls.kafka_bootstrap),
            backend=backend,
            name_prefix=prefix,
            secret=secret,
            dev=dev,
            dev_login=_bool(env, "CHAT_DEV_LOGIN", dev),
            accounts=_bool(env, "CHAT_ACCOUNTS", False),
            allowed_origins=origins,
            token_ttl_s=_int(env, "CHAT_TOKEN_TTL_S", cls.token_ttl_s),
            session_ttl_s=_float(env, "CHAT_SESSION_TTL_S", cls.session_ttl_s),
            heartbeat_s=_float(env, "CHAT_HEARTBEAT_S", cls.heartbeat_s),
            poll_interval_ms=_float(env, "CHAT_POLL_MS", cls.poll_interval_ms),
            kafka_linger_ms=_float(env, "CHAT_KAFKA_LINGER_MS", cls.kafka_linger_ms),
            kafka_fetch_wait_ms=_int(env, "CHAT_KAFKA_FETCH_WAIT_MS", cls.kafka_fetch_wait_ms),
            kafka_fetch_min_bytes=_int(env, "CHAT_KAFKA_FETCH_MIN_BYTES", cls.kafka_fetch_min_bytes),
            kafka_send_timeout_s=_float(env, "CHAT_KAFKA_SEND_TIMEOUT_S", cls.kafka_send_timeout_s),
            kafka_batch=_bool(env, "CHAT_KAFKA_BATCH", cls.kafka_batch),
            ping_interval_s=_float(env, "CHAT_WS_PING_S", cls.ping_interval_s),
            history_min=_int(env, "CHAT_HISTORY_MIN", cls.history_min),
            history_keep_s=_float(env, "CHAT_HISTORY_KEEP_S", cls.history_keep_s),
            history_max=_int(env, "CHAT_HISTORY_MAX", cls.history_max),
            dedupe_s=_float(env, "CHAT_DEDUPE_S", cls.dedupe_s),
            channel_idle_s=_float(env, "CHAT_CHANNEL_IDLE_S", cls.channel_idle_s),
            conn_rate_per_s=_float(env, "CHAT_CONN_RATE_PER_S", cls.conn_rate_per_s, allow_zero=True),
            conn_burst=_int(env, "CHAT_CONN_BURST", cls.conn_burst),
            user_rate_per_s=_int(env, "CHAT_USER_RATE_PER_S", cls.user_rate_per_s, allow_zero=True),
            presence_max_online=_int(env, "CHAT_PRESENCE_MAX_ONLINE", cls.presence_max_online, allow_zero=True),
            shed_after_ms=_float(env, "CHAT_SHED_AFTER_MS", cls.shed_after_ms, allow_zero=True),
            resume_wait_ms=_float(env, "CHAT_RESUME_WAIT_MS", cls.resume_wait_ms, allow_zero=True),
            gap_wait_ms=_float(env, "CHAT_GAP_WAIT_MS", cls.gap_wait_ms),
            flood_strikes=_int(env, "CHAT_FLOOD_STRIKES", cls.flood_strikes),
            max_sessions_per_user=_int(env, "CHAT_MAX_SESSIONS_PER_USER", cls.max_sessions_per_user),
            max_conns_per_ip=_int(env, "CHAT_MAX_CONNS_PER_IP", cls.max_conns_per_ip),
            trusted_proxies=_networks(env, "CHAT_TRUSTED_PROXIES", cls.trusted_proxies),
            max_send_buffer=_int(env, "CHAT_MAX_SEND_BUFFER", cls.max_send_buffer),
            log_level=_choice(env, "CHAT_LOG_LEVEL", cls.log_level, LOG_LEVELS, upper=True),
            log_format=_choice(env, "CHAT_LOG_FORMAT", cls.log_format, ("text", "json")),
            admin_token=env.get("CHAT_ADMIN_TOKEN", ""),
            token_url=_token_url(env, "CHAT_TOKEN_URL"),
            token_leeway_s=_float(env, "CHAT_TOKEN_LEEWAY_S", cls.token_leeway_s, allow_zero=True),
        )
        if settings.admin_token and len(settings.admin_token) < 16:
            raise ConfigError("CHAT_ADMIN_TOKEN is too short: use at least 16 random characters")
        if _PUBLISHED.search(settings.admin_token):
            raise ConfigError("CHAT_ADMIN_TOKEN is a published example value: use your own (openssl rand -hex 16)")
        if settings.history_max < settings.history_min:
            raise ConfigError("CHAT_HISTORY_MAX must be at least CHAT_HISTORY_MIN")
        if settings.heartbeat_s * 2 > settings.session_ttl_s:
            raise ConfigError(
                "CHAT_HEARTBEAT_S must be at most half of CHAT_SESSION_TTL_S, "
                "or live sessions expire between two heartbeats"
            )
        return settings


def _default_port(server_id: str) -> int:
    """ws-N listens on 8080+N by the protocol; other ids default to 8081."""
    match = re.fullmatch(r"ws-(\d{1,4})", server_id)
    return 8080 + int(match.group(1)) if match else 8081


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: use 1 or 0")


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _int(env: Mapping[str, str], name: str, default: int, allow_zero: bool = False) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={raw!r}: expected a positive number{' or 0 (off)' if allow_zero else ''}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, allow_zero: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r}: expected a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={raw!r}: expected a positive number{' or 0 (off)' if allow_zero else ''}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...], upper: bool = False) -> str:
    raw = env.get(name) or default
    value = raw.upper() if upper else raw
    if value not in allowed:
        raise ConfigError(f"{name}={raw!r}: use one of {', '.join(allowed)}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value > 65535:
        raise ConfigError(f"{name}={env.get(name)!r}: a TCP port is 1 to 65535")
    return value


_HOSTNAME_RE = re.compile(r"\A(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z")


def _is_host(host: str) -> bool:
    """An IP address or a DNS name (no scheme, port or path)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.fullmatch(host))


def _host(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    if not _is_host(value):
        raise ConfigError(f"{name}={value!r}: use an IP address (0.0.0.0 for every interface) or a host name")
    return value


def _host_port(item: str) -> bool:
    """``host:port`` or ``[v6]:port``, the port 1 to 65535."""
    host, sep, port = item.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        return ":" in host and _is_host(host)
    return _is_host(host)


def _bootstrap(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    items = [item.strip() for item in value.split(",")]
    if not all(_host_port(item) for item in items):
        raise ConfigError(f"{name}={value!r}: use host:port[,host:port...] (ports 1 to 65535)")
    return ",".join(items)


def _redis_url(env: Mapping[str, str], name: str, default: str) -> str:
    """A URL that ``redisclient.redis_client`` can follow, checked before anything connects."""
    value = env.get(name) or default
    scheme, _, rest = value.partition("://")
    if scheme == "redis+cluster" and "?" in rest:
        raise ConfigError(f"{name}={value!r}: redis+cluster:// takes no ?options: give the nodes only")
    rest = rest.partition("?")[0]  # options (?ssl_cert_reqs=...) are the client's business
    forms = {
        "redis": "redis://[:password@]host[:port][/db]",
        "rediss": "rediss://[:password@]host[:port][/db]",
        "unix": "unix:///path/to/redis.sock",
        "redis+sentinel": "redis+sentinel://[:password@]host:port[,host:port]/service[/db]",
        "redis+cluster": "redis+cluster://[:password@]host:port[,host:port]",
    }
    if scheme not in forms:
        raise ConfigError(f"{name}={value!r}: the scheme must be one of {', '.join(s + '://' for s in forms)}")
    netloc, _, path = rest.partition("/")
    hosts = netloc.rsplit("@", 1)[-1].split(",")
    parts = path.split("/") if path else []
    if scheme == "unix":
        ok = not netloc and bool(path)
    elif scheme == "redis+sentinel":
        ok = all(map(_host_port, hosts)) and len(parts) in (1, 2) and bool(parts[0]) and parts[-1:] != [""]
        ok = ok and (len(parts) == 1 or parts[1].isdigit())
    elif scheme == "redis+cluster":
        ok = all(map(_host_port, hosts)) and not path
    else:
        ok = len(hosts) == 1 and (_host_port(hosts[0]) or _is_host(hosts[0])) and (not path or path.isdigit())
    if not ok:
        raise ConfigError(f"{name}={value!r}: use {forms[scheme]}")
    return value


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = _list(env, name, ())
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            raise ConfigError(
                f"{name}: {origin!r} is not an origin: use scheme://host[:port], like https://chat.example"
            )
    return origins


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses (a network of one) and CIDRs; ``ValueError`` names the first that is neither."""
    networks = []
    for item in items:
        try:
            networks.append(ip_network(item, strict=True))
        except ValueError as exc:
            if "host bits set" in str(exc):
                raise ValueError(
                    f"{item!r} has host bits set: the network is {ip_network(item, strict=False)}"
                ) from None
            raise ValueError(f"{item!r} is neither an IP address nor a CIDR network") from None
    return tuple(networks)


def _networks(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    items = _list(env, name, default)
    try:
        parse_networks(items)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}; use addresses or CIDRs, like 127.0.0.1,10.0.0.0/8") from None
    return items


def _token_url(env: Mapping[str, str], name: str) -> str:
    """Empty (the page signs in here), a path on this origin, or an http(s) URL elsewhere."""
    value = env.get(name, "").strip()
    if not value or (value.startswith("/") and not value.startswith("//")):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={value!r}: use a path on this server (/auth/token) or an http(s):// URL")
    return value
