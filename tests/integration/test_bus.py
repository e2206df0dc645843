"""KafkaBus on the real Kafka: what one loop turn publishes to a server travels as one record."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from chatserver.kafkabus import KafkaBus
from chatserver.names import Names
from tests.integration.conftest import KAFKA_BOOTSTRAP, _delete_names


@pytest.mark.gen_test(timeout=90)
async def test_a_turns_payloads_to_one_server_are_one_record_and_arrive_in_order() -> None:
    names = Names(f"test-bus-{uuid.uuid4().hex[:8]}-")
    sender = KafkaBus(KAFKA_BOOTSTRAP, "ws-a", names)
    receiver = KafkaBus(KAFKA_BOOTSTRAP, "ws-b", names)
    got: list[bytes] = []
    try:
        await sender.start(lambda payload: None)
        await receiver.start(got.append)
        deadline = time.monotonic() + 60
        while not receiver.status()[0]:  # its consumer position is fixed: nothing sent now is skipped
            assert time.monotonic() < deadline, receiver.status()[1]
            await asyncio.sleep(0.1)
        payloads = [f"payload {i}".encode() for i in range(50)]
        await asyncio.gather(*(sender.publish("ws-b", payload) for payload in payloads))  # all acked
        assert sender.records == 1, "fifty payloads of one turn: one record, one delivery report"
        while len(got) < len(payloads):
            assert time.monotonic() < deadline, f"{len(got)} of {len(payloads)} arrived"
            await asyncio.sleep(0.05)
        assert got == payloads
        await sender.publish("ws-b", b"alone")  # a turn with one payload sends it as it is
        assert sender.records == 2
        while got[-1] != b"alone":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await sender.close()
        await receiver.close()
        _delete_names(names.prefix)
