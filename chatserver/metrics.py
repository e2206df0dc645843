"""Prometheus metrics of one chat server, in a registry of its own (no global state): the
server's own series, ``chat_build_info``, and the process, GC and platform collectors that the
default registry would have had."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Sequence

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
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from chatserver.build import build_info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Tally:
    """One counter (or one labelled child of one): a plain number. The client library's
    ``Counter.inc`` takes a lock and checks its state on every call; a server counts several
    times a message on one thread, which needs neither."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Tallies(Collector):
    """A counter family for the hot path, exported as ``Counter`` would be (``name_total`` and
    ``name_created`` per child). Without label names it is one ``Tally``: ``inc`` it directly."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry):
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._children: dict[tuple[str, ...], Tally] = {}
        self._unlabelled = None if labelnames else self.labels()
        registry.register(self)

    def labels(self, *values: str) -> Tally:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes the labels {self._labelnames}, got {values}")
            child = self._children[values] = Tally()
        return child

    def inc(self, amount: float = 1.0) -> None:
        if self._unlabelled is None:
            raise ValueError(f"{self._name} is counted by its labels: use labels(...).inc()")
        self._unlabelled.inc(amount)

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._doc, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value, created=child.created)
        return [family]


class Timings(Collector):
    """A histogram for the hot path, exported as ``Histogram`` would be: a bucket count per
    bound, found by bisection, with no lock (see ``Tally``)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], *, registry: CollectorRegistry):
        self._name, self._doc = name, documentation
        self._bounds = sorted(float(b) for b in buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last: above every bound (+Inf)
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._doc)]

    def collect(self) -> Iterable[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip([*self._bounds, float("inf")], self._counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        family = HistogramMetricFamily(self._name, self._doc)
        family.add_metric([], buckets, self._sum)
        family.add_sample(self._name + "_created", {}, self._created)
        return [family]


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
        self.handshake_refusals = Tallies(
            "chat_handshake_refusals",
            "WebSocket handshakes refused, by reason (the error code of the answer)",
            ["reason"],
            registry=r,
        )
        self.users = Gauge("chat_local_users", "Distinct users with a session on this server", registry=r)
        self.frames_in = Tallies("chat_frames_in", "Client frames received, by type", ["type"], registry=r)
        self.frames_out = Tallies("chat_frames_out", "Frames written to clients, by type", ["type"], registry=r)
        self.sessions_per_user = Histogram(
            "chat_sessions_per_user",
            "Sessions a user has on this server, observed as each one opens",
            buckets=(1, 2, 3, 5, 10, 20),
            registry=r,
        )
        self.registry_ops = Tallies("chat_registry_ops", "Registry operations, by name", ["op"], registry=r)
        self.messages_routed = Tallies(
            "chat_messages_routed", "Messages accepted from local clients, by kind", ["kind"], registry=r
        )
        self.messages_acked = Tallies("chat_messages_acked", "Messages acked after Kafka had them", registry=r)
        self.deliveries = Tallies(
            "chat_deliveries", "Message frames written to local sockets, by kind", ["kind"], registry=r
        )
        self.errors = Tallies("chat_errors", "Error frames sent to clients, by code", ["code"], registry=r)
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
        self.publish_seconds = Timings(
            "chat_publish_seconds", "From send to durable (all topics acked)", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.delivery_seconds = Timings(
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
