"""The bus on Kafka (contract: ``bus.Bus``): one topic per server, ``messages-{SERVER_ID}``.

It never blocks the IOLoop: a periodic callback runs ``poll(0)`` for
delivery reports and ``consume(n, timeout=0)`` for what is ready. What is published to one topic
in one loop turn travels as one record (``BATCH_MARK`` and a msgpack array of the payloads),
with one delivery report for all: under load a turn carries tens of messages, and the broker's
and both servers' cost per record, not per message, is most of what Kafka costs. Readiness is proven end to
end: the bus keeps one small probe in flight through its own topic, and is ready only while
probes come back. That covers "Kafka answers" and "this server consumes its topic" at once,
and guarantees that the consumer's position is fixed before the server announces itself,
so nothing produced to it afterwards is skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import msgpack
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # exported, not re-declared

from chatserver.bus import BusError, OnMessage
from chatserver.names import Names

log = logging.getLogger(__name__)

PROBE_KEY = b"\x00chat-probe"
#: First byte of a record that carries several payloads: 0xc1 is never used by msgpack, so no
#: single envelope starts with it. (A server older than this one cannot read such records:
#: upgrade every server before running a cluster with mixed versions, or batch=False.)
BATCH_MARK = b"\xc1"
#: A record of one turn's payloads stays under this many bytes (Kafka's default limit is 1 MB).
MAX_RECORD_BYTES = 512 * 1024


class _TurnRecords:
    """What one loop turn publishes, as one record per topic (see the module docstring), through
    a producer whose delivery reports answer each payload's future."""

    def __init__(self, producer: Producer, batch: bool) -> None:
        self._producer = producer
        self._batch = batch
        self._pending: dict[str, tuple[list[bytes], list[asyncio.Future[None]]]] = {}  # topic -> this turn's
        self._flush_scheduled = False
        self.records = 0  # records produced (for tests and metrics)

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._batch:
            self._produce(topic, payload, [future])
            return future
        pending = self._pending.get(topic)
        if pending is None:
            pending = self._pending[topic] = ([], [])
        pending[0].append(payload)
        pending[1].append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        """This turn's payloads, one record per topic (split only past ``MAX_RECORD_BYTES``)."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for topic, (payloads, futures) in pending.items():
            start, size = 0, 0
            for end, payload in enumerate(payloads):
                if size + len(payload) > MAX_RECORD_BYTES and end > start:
                    self._produce_batch(topic, payloads[start:end], futures[start:end])
                    start, size = end, 0
                size += len(payload)
            self._produce_batch(topic, payloads[start:], futures[start:])

    def _produce_batch(self, topic: str, payloads: list[bytes], futures: list[asyncio.Future[None]]) -> None:
        value = payloads[0] if len(payloads) == 1 else BATCH_MARK + msgpack.packb(payloads, use_bin_type=True)
        self._produce(topic, value, futures)

    def _produce(self, topic: str, value: bytes, futures: list[asyncio.Future[None]]) -> None:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            for future in futures:
                if future.done():
                    continue
                if err is None:
                    future.set_result(None)
                else:
                    future.set_exception(BusError(f"kafka: {err.str()}"))

        try:
            self._producer.produce(topic, value, on_delivery=on_delivery)
            self.records += 1
        except (BufferError, KafkaException) as exc:
            why = "kafka producer queue is full; retry shortly" if isinstance(exc, BufferError) else f"kafka: {exc}"
            for future in futures:
                future.set_exception(BusError(why))


class KafkaBus:
    """Per-server topics on Apache Kafka through confluent-kafka."""

    _BATCH = 1000  # messages taken per consume() call
    _MAX_BATCHES_PER_TICK = 8  # yield to the IOLoop after this many

    def __init__(
        self,
        bootstrap: str,
        server_id: str,
        names: Names,
        poll_interval_ms: float = 2.0,
        linger_ms: float = 1.0,
        fetch_wait_ms: int = 100,
        fetch_min_bytes: int = 1,
        send_timeout_s: float = 30.0,
        probe_interval_s: float = 1.0,
        batch: bool = True,
    ) -> None:
        self._bootstrap = bootstrap
        self._server_id = server_id
        self._names = names
        self._topic = names.server_topic(server_id)
        self._poll_interval_ms = poll_interval_ms
        self._probe_interval_s = probe_interval_s
        common: dict[str, Any] = {"bootstrap.servers": bootstrap, "error_cb": self._on_kafka_error}
        self._producer = Producer(
            {
                **common,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": linger_ms,
                "message.timeout.ms": int(send_timeout_s * 1000),
                "socket.keepalive.enable": True,
            }
        )
        self._consumer = Consumer(
            {
                **common,
                "group.id": names.consumer_group(server_id),
                # Static membership: a restarted server takes its partition back at once
                # instead of waiting out the dead one's session, and a second process with
                # the same SERVER_ID is fenced rather than silently sharing the topic.
                "group.instance.id": names.consumer_group(server_id),
                # A new process starts at the end of its topic: what was sent to its previous
                # incarnation is in the history, and its sessions have resumed elsewhere. Nothing
                # is routed here before the probe proves that position is fixed. Later
                # (re)assignments resume from the position this process keeps in memory.
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": fetch_wait_ms,
                "fetch.min.bytes": fetch_min_bytes,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 2000,
                "statistics.interval.ms": 5000,  # consumer lag for /metrics and /admin
                "stats_cb": self._on_stats,
            }
        )
        self._admin = AdminClient(common)
        self._on_message: OnMessage | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._topic_task: asyncio.Task[None] | None = None
        self._assigned = False
        self._next_offsets: dict[int, int] = {}
        self._lag = 0  # partition -> next offset this process consumes
        self._topic_ready = False
        self._last_error = ""
        self._probe_seq = 0
        self._probe_prefix = f"{server_id}:{time.time_ns()}:".encode()  # this incarnation's probes
        self._probe_sent_at = 0.0
        self._probe_seen_at = 0.0
        self._records = _TurnRecords(self._producer, batch)

    async def start(self, on_message: OnMessage) -> None:
        self._on_message = on_message
        self._topic_task = asyncio.create_task(self._ensure_topic())
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        # A plain timer, not tornado's PeriodicCallback: that makes a Task per run, which was
        # most of a server's CPU with no traffic (10% of a core at 500 ticks/s).
        self._timer = asyncio.get_running_loop().call_later(self._poll_interval_ms / 1000, self._run_tick)

    def _run_tick(self) -> None:
        try:
            self._tick()
        except Exception:  # a failing tick must not stop consuming
            log.exception("kafka poll failed")
        if self._timer is not None:  # None once closed
            self._schedule_tick()

    async def _ensure_topic(self) -> None:
        """Create this server's topic if missing, retrying until Kafka answers; then subscribe."""
        delay = 0.5
        while True:
            futures = self._admin.create_topics(
                [NewTopic(self._topic, num_partitions=1, replication_factor=-1)],
                request_timeout=5.0,
            )
            try:
                await asyncio.wrap_future(futures[self._topic])
                log.info("created topic %s", self._topic)
                break
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    break
                self._last_error = f"cannot create topic {self._topic} at {self._bootstrap}: {exc}"
                log.warning("%s; retrying in %.1fs", self._last_error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        self._topic_ready = True
        self._consumer.subscribe([self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for partition in partitions:
            partition.offset = self._next_offsets.get(partition.partition, OFFSET_END)
        consumer.assign(partitions)
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))
        self._assigned = bool(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions revoked from %s", self._topic)
        self._assigned = False

    def _on_stats(self, raw: str) -> None:
        """librdkafka's statistics (served from consume(), on the IOLoop thread)."""
        try:
            partitions = json.loads(raw)["topics"][self._topic]["partitions"]
            self._lag = sum(max(0, int(p.get("consumer_lag", 0))) for k, p in partitions.items() if k != "-1")
        except (KeyError, ValueError, TypeError):
            return

    def lag(self) -> int:
        return self._lag

    @property
    def records(self) -> int:
        """Records produced for ``publish`` so far (for tests and metrics)."""
        return self._records.records

    def _on_kafka_error(self, err: KafkaError) -> None:
        self._last_error = f"kafka at {self._bootstrap}: {err.str()}"
        log.warning("%s", self._last_error)

    def publish(self, server_id: str, payload: bytes) -> asyncio.Future[None]:
        return self._records.publish(self._names.server_topic(server_id), payload)

    def _tick(self) -> None:
        """The periodic IOLoop callback: delivery reports, then whatever messages are ready."""
        self._producer.poll(0)
        if not self._topic_ready:
            return
        for _ in range(self._MAX_BATCHES_PER_TICK):
            batch = self._consumer.consume(self._BATCH, 0)
            for msg in batch:
                self._handle(msg)
            if len(batch) < self._BATCH:
                break
        self._maybe_probe()

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                self._last_error = f"kafka consumer: {err.str()}"
                log.warning("%s", self._last_error)
            return
        partition, offset = msg.partition(), msg.offset()
        if partition is not None and offset is not None:
            self._next_offsets[partition] = offset + 1
        value = msg.value()
        if value is None:
            return
        if msg.key() == PROBE_KEY:
            if value.startswith(self._probe_prefix):
                self._probe_seen_at = time.monotonic()
            return
        assert self._on_message is not None
        payloads = [value]
        if value[:1] == BATCH_MARK:
            try:
                payloads = msgpack.unpackb(value[1:], raw=False)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
                log.error("dropped an undecodable record from %s at offset %s: %s", self._topic, msg.offset(), exc)
                return
        for payload in payloads:
            try:
                self._on_message(payload)
            except Exception:  # one bad message must not stop the consumer
                log.exception("failed to handle a message from %s at offset %s", self._topic, msg.offset())

    def _maybe_probe(self) -> None:
        """Keep probes flowing through our own topic: every interval, 4x as often until one is back.

        Probes are tiny and expire with the send timeout, so an outage queues only a few.
        """
        now = time.monotonic()
        interval = self._probe_interval_s if self._probe_seen_at else self._probe_interval_s / 4
        if not self._assigned or now - self._probe_sent_at < interval:
            return
        self._probe_seq += 1
        try:
            self._producer.produce(self._topic, self._probe_prefix + str(self._probe_seq).encode(), key=PROBE_KEY)
        except (BufferError, KafkaException) as exc:
            self._last_error = f"kafka probe not sent: {exc}"
            return
        self._probe_sent_at = now

    def status(self) -> tuple[bool, str]:
        if not self._topic_ready:
            return False, self._last_error or f"kafka: creating topic {self._topic}"
        if not self._assigned:
            return False, f"kafka: waiting for the assignment of {self._topic}"
        if self._probe_seen_at == 0.0:
            return False, f"kafka: waiting for the first probe through {self._topic}"
        silent = time.monotonic() - self._probe_seen_at
        if silent > 5 * self._probe_interval_s + 1.0:
            return False, f"kafka: no probe came back through {self._topic} for {silent:.0f}s ({self._last_error})"
        return True, "ok"

    async def close(self) -> None:
        self._records.flush()  # what was published this turn goes out with the rest
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._topic_task is not None:
            self._topic_task.cancel()
        # A non-blocking flush: the IOLoop keeps serving while deliveries complete.
        deadline = time.monotonic() + 5.0
        while len(self._producer) > 0 and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(0.01)
        self._producer.poll(0)
        if len(self._producer) > 0:
            log.error("%d messages not delivered to Kafka at shutdown", len(self._producer))
        if self._topic_ready:
            # close() commits offsets and leaves the group; it blocks briefly, so off-loop.
            await asyncio.get_running_loop().run_in_executor(None, self._consumer.close)
