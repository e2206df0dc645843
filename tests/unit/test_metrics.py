"""The hot path's counters and histograms: what Prometheus scrapes of them is what the client
library's ``Counter`` and ``Histogram`` would export, so dashboards and alerts read them alike."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from chatserver.metrics import Tallies, Timings


def _scraped(registry: CollectorRegistry) -> list[str]:
    """The exposition, with each ``_created`` timestamp replaced (they differ by construction)."""
    text = generate_latest(registry).decode()
    return [re.sub(r"(_created.*) \S+$", r"\1 T", line) for line in text.splitlines()]


def test_tallies_are_scraped_as_the_client_library_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tallies = Tallies("chat_frames_in", "Client frames received, by type", ["type"], registry=ours)
    counter = Counter("chat_frames_in", "Client frames received, by type", ["type"], registry=theirs)
    for label, amount in (("private", 1), ("ping", 3), ("private", 2)):
        tallies.labels(label).inc(amount)
        counter.labels(label).inc(amount)
    assert _scraped(ours) == _scraped(theirs)
    assert 'chat_frames_in_total{type="private"} 3.0' in _scraped(ours)


def test_an_unlabelled_tally_counts_directly_and_a_labelled_one_only_by_its_labels() -> None:
    registry = CollectorRegistry()
    acked = Tallies("chat_messages_acked", "Messages acked", registry=registry)
    acked.inc()
    acked.inc(2)
    assert "chat_messages_acked_total 3.0" in _scraped(registry)
    by_kind = Tallies("chat_deliveries", "Deliveries, by kind", ["kind"], registry=registry)
    with pytest.raises(ValueError, match="labels"):
        by_kind.inc()
    with pytest.raises(ValueError, match="labels"):
        by_kind.labels("private", "extra")


def test_timings_are_scraped_as_the_client_library_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bounds = (0.001, 0.005, 0.01, 1.0)
    timings = Timings("chat_publish_seconds", "From send to durable", bounds, registry=ours)
    histogram = Histogram("chat_publish_seconds", "From send to durable", buckets=bounds, registry=theirs)
    for value in (0.0005, 0.001, 0.003, 0.01, 0.5, 7.0):  # on a bound counts in that bucket
        timings.observe(value)
        histogram.observe(value)
    assert _scraped(ours) == _scraped(theirs)
    assert 'chat_publish_seconds_bucket{le="0.001"} 2.0' in _scraped(ours)
    assert 'chat_publish_seconds_bucket{le="+Inf"} 6.0' in _scraped(ours)
