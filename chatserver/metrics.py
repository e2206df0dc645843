"""Prometheus metrics of one chat server, in a registry of its own (no global state): the
server's own series, ``chat_build_info``, and the process, GC and platform collectors that the
default registry would have had."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from chatserver.build import build_info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Children:
    """A labelled counter whose children are kept in a plain dict: ``labels()`` of the client
    library validates and locks on every call, and the hot path counts several times a frame."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, ...], Counter] = {}

    def labels(self, *values: str) -> Counter:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._counter.labels(*values)
        return child

    def collect(self) -> Iterable[Metric]:
        return self._counter.collect()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        GCCollector(registry=r)  # python_gc_*
        PlatformCollector(registry=r)  # python_info
        build = build_info()
        self.build = Info("chat_build", "This server's version, commit and Python", registry=r)
        self.build.info({"version": build.version, "commit": build.commit, "python": build.python})
        self.connections = Gauge("chat_connections", "Open WebSocket sessions on this server", registry=r)
        self.ready = Gauge("chat_ready", "1 while /readyz would answer 200 (Redis not rechecked), else 0", registry=r)
        self.redis_up = Gauge("chat_redis_up", "1 while the registry heartbeat to Redis succeeds, else 0", registry=r)
        self.kafka_up = Gauge("chat_kafka_up", "1 while this server's probe comes back through Kafka", registry=r)
        self.connections_opened = Counter(
            "chat_connections_opened", "WebSocket sessions opened (handshake accepted)", registry=r
        )
        self.connections_closed = Counter("chat_connections_closed", "WebSocket sessions closed", registry=r)
        self.handshake_refusals = _Children(
            Counter(
                "chat_handshake_refusals",
                "WebSocket handshakes refused, by reason (the error code of the answer)",
                ["reason"],
                registry=r,
            )
        )
        self.users = Gauge("chat_local_users", "Distinct users with a session on this server", registry=r)
        self.frames_in = _Children(Counter("chat_frames_in", "Client frames received, by type", ["type"], registry=r))
        self.frames_out = _Children(
            Counter("chat_frames_out", "Frames written to clients, by type", ["type"], registry=r)
        )
        self.sessions_per_user = Histogram(
            "chat_sessions_per_user",
            "Sessions a user has on this server, observed as each one opens",
            buckets=(1, 2, 3, 5, 10, 20),
            registry=r,
        )
        self.registry_ops = _Children(Counter("chat_registry_ops", "Registry operations, by name", ["op"], registry=r))
        self.messages_routed = _Children(
            Counter("chat_messages_routed", "Messages accepted from local clients, by kind", ["kind"], registry=r)
        )
        self.messages_acked = Counter("chat_messages_acked", "Messages acked after Kafka had them", registry=r)
        self.deliveries = _Children(
            Counter("chat_deliveries", "Message frames written to local sockets, by kind", ["kind"], registry=r)
        )
        self.errors = _Children(Counter("chat_errors", "Error frames sent to clients, by code", ["code"], registry=r))
        self.retries_recognised = Counter(
            "chat_retries_recognised", "Sends recognised as retries of a stored message", registry=r
        )
        self.presence_withheld = Counter(
            "chat_presence_withheld",
            "Online/offline announcements not sent: more users online than CHAT_PRESENCE_MAX_ONLINE",
            registry=r,
        )
        self.messages_shed = Counter(
            "chat_messages_shed",
            "Messages refused because older ones were still unacknowledged (CHAT_SHED_AFTER_MS)",
            registry=r,
        )
        self.backlog_oldest = Gauge(
            "chat_backlog_oldest_seconds", "Age of the oldest accepted message not yet acked or refused", registry=r
        )
        self.replayed = Counter("chat_replayed_messages", "Messages replayed by resume", registry=r)
        self.channel_resets = Counter(
            "chat_channel_resets",
            "Channels whose readers here were told to resume: offsets started over, or a hole history lost",
            registry=r,
        )
        self.consumer_lag = Gauge("chat_consumer_lag", "Messages in this server's topic not consumed yet", registry=r)
        self.bus_failures = Counter("chat_bus_publish_failures", "Publishes the bus refused", registry=r)
        self.registry_failures = Counter("chat_registry_failures", "Registry calls that failed", registry=r)
        self.publish_seconds = Histogram(
            "chat_publish_seconds", "From send to durable (all topics acked)", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.delivery_seconds = Histogram(
            "chat_delivery_seconds",
            "From accepting a message to writing it to local sockets (wall clocks of two servers)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def count_out(self, frame_type: object) -> None:
        """A frame written to a client, by type."""
        self.frames_out.labels(str(frame_type)).inc()

    def count_registry_op(self, op: str) -> None:
        """A call of the registry, by operation."""
        self.registry_ops.labels(op).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
