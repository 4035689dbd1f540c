"""Prometheus metrics of the platform, one registry per process, served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("spotcheck_events_in_total", "Events consumed, by topic", ["topic"])
EVENTS_OUT = Counter("spotcheck_events_out_total", "Events produced, by topic", ["topic"])
DEAD_LETTERS = Counter("spotcheck_dead_letters_total", "Inputs rejected, by source", ["source"])
QUARANTINED = Counter(
    "spotcheck_quarantined_total",
    "Records a consumer could not process (not retriable, or still failing past the retry limit),"
    " set aside as dead letters so that the rest of their batch goes on",
    ["group", "topic"],
)
VERDICT_LATENCY = Histogram(
    "spotcheck_verdict_latency_seconds",
    "From the broker timestamp of a sample's last result to its verdict being published",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge(
    "spotcheck_consumer_lag", "Records behind the high watermark", ["group", "topic", "partition"]
)
BATCH_SECONDS = Histogram(
    "spotcheck_batch_seconds",
    "Time to process one consumed batch",
    ["group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SAMPLES_CACHED = Gauge(
    "spotcheck_samples_cached", "Open samples the verdict processor holds (at most sample_cache_size)"
)
OUTBOX_UNPUBLISHED = Gauge("spotcheck_outbox_unpublished", "Outbox rows waiting for the relay")
OUTBOX_FORGOTTEN = Counter(
    "spotcheck_outbox_republished_total", "Outbox rows published again after the broker lost them"
)
