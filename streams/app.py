"""The faust-streaming app factory: one app per settings, nothing connected at import time."""

from __future__ import annotations

from typing import Any

import faust

from spotcheck.settings import Settings


def create_app(settings: Settings) -> faust.App:
    """The stream processor's app; agents, tables and timers are attached by `streams.agents`."""
    options: dict[str, Any] = {}
    if settings.single_record_batches:
        # tansu answers a wrong high watermark for multi-record batches, which makes table
        # recovery drop a changelog's tail: one record per batch keeps it right.
        options["producer_max_batch_size"] = 1
    app = faust.App(
        settings.streams_app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        producer_acks=-1,
        web_enabled=False,
        datadir=str(settings.state_dir / "streams"),
        timezone=settings.timezone,
        **options,
    )
    from streams import agents

    agents.attach(app, settings)
    return app
