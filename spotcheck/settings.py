"""The one settings object: read from SPOTCHECK_* environment variables, built once, passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the platform. Nothing else reads the environment."""

    model_config = SettingsConfigDict(env_prefix="SPOTCHECK_", extra="ignore", frozen=True)

    # Where things run. None means "start the embedded one".
    kafka_bootstrap: str | None = None
    database_url: SecretStr | None = None
    state_dir: Path = Path(".spotcheck")

    # Embedded broker (tansu) and HTTP server.
    broker_host: str = "127.0.0.1"
    broker_port: int = 9092
    embedded_db_port: int = 55432
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    admin_token: SecretStr | None = None

    # Topics: names are "<namespace>.<name>", e.g. spotcheck.lab-results.
    topic_namespace: str = "spotcheck"
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication: int = Field(default=1, ge=1)

    # Consumer groups, tuned for the embedded broker. tansu drops a member that sent no heartbeat
    # for the session timeout and answers a JoinGroup only after half of it (in whole seconds; the
    # rebalance timeout plays no part), so a killed worker's partitions move in about 1.5 session
    # timeouts plus a heartbeat interval (BENCHMARKS.md). Apache Kafka refuses session timeouts
    # under its group.min.session.timeout.ms (6 s by default): deployments set their own (deploy/).
    session_timeout_ms: int = 3_000
    rebalance_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 500
    one_record_batches: bool | None = None  # tansu watermark workaround; None = when embedded

    # The verdict processor.
    batch_max_records: int = Field(default=2_000, ge=1)
    batch_timeout_ms: int = Field(default=200, ge=1)
    result_grace_seconds: float = Field(default=300.0, ge=0)
    sample_cache_size: int = Field(
        default=10_000,
        ge=100,
        description="open samples (no verdict yet for their results) kept in memory; judged ones are not",
    )

    # The outbox relay: messages the platform owes the broker, published from PostgreSQL.
    outbox_batch: int = Field(default=1000, ge=1, description="rows the relay publishes at once")
    outbox_poll_seconds: float = Field(default=1.0, gt=0, description="look for rows without a notice")
    outbox_track_seconds: float = Field(default=2.0, gt=0, description="how often processed rows are found")
    outbox_keep_seconds: float = Field(default=3600.0, ge=0, description="processed rows kept for")
    outbox_max_age_hours: float = Field(
        default=168.0, gt=0, description="rows a reader never processed are dropped after (with a warning)"
    )

    # Lab ingest (HTTP and files).
    ingest_max_batch: int = Field(default=500, ge=1, description="results per POST /api/v1/lab-results")
    lab_key_cache_seconds: float = Field(default=10.0, ge=0, description="how long a verified key is trusted")
    registry_max_batch: int = Field(default=1000, ge=1, description="records per POST /api/v1/registry/…")

    # Push to quality-testing centers. A failing delivery is retried for a time, not a number of
    # attempts (a center down for an hour still gets everything), backing off from the initial
    # wait, doubling, to the cap; a result waits up to result_grace_seconds for its task.
    push_retry_for_seconds: float = Field(
        default=21_600.0, gt=0, description="how long a failing delivery is retried before it fails"
    )
    push_max_attempts: int | None = Field(
        default=None, ge=1, description="also give up after this many attempts (unset: time only)"
    )
    push_backoff_initial_seconds: float = Field(default=1.0, gt=0)
    push_backoff_max_seconds: float = Field(default=300.0, gt=0)
    push_timeout_seconds: float = Field(default=10.0, gt=0)
    push_poll_seconds: float = Field(default=0.5, gt=0)

    # Domain.
    timezone: str = "Asia/Shanghai"

    # Scheduling and chain of custody.
    sampling_days: int = Field(default=30, ge=0, description="days a drawn task has to be sampled")
    max_transit_hours: float = Field(default=48.0, gt=0, description="sampled/shipped to received")
    overdue_check_seconds: float = Field(default=30.0, gt=0, description="how often deadlines are checked")
    inspector_token_cache_seconds: float = Field(default=10.0, ge=0)
    campaign_check_seconds: float = Field(
        default=300.0, gt=0, description="how often due campaign rounds are drawn"
    )

    # Enforcement cases.
    case_check_seconds: float = Field(default=30.0, gt=0, description="how often case deadlines are checked")
    case_rules_file: Path | None = Field(default=None, description="JSON rules; the shipped ones when unset")
    clock_file: Path | None = Field(
        default=None,
        description="a file holding an ISO time the case and deadline timers take as now (drills, tests)",
    )

    # The stream processor's state: its tables are rebuilt from PostgreSQL where the broker lost them.
    stream_refeed_margin_hours: float = Field(
        default=168.0,
        gt=0,
        description="case inputs fed again from this long before an enterprise's last snapshot; "
        "reported tasks looked at for alerts still owed for this long",
    )
    stream_finished_keep_hours: float = Field(
        default=1.0,
        ge=0,
        description="how long a task with no deadline left stays in the deadline table (a late "
        "message or a rebuild then finds it finished) before it is dropped",
    )
    stream_outcome_window_hours: float = Field(
        default=168.0,
        gt=0,
        description="how long each task's latest verdict is remembered, so that a verdict counted "
        "once in the pass rates is never counted again",
    )

    # Demo simulator.
    demo_rate: float = Field(default=2.0, gt=0, description="simulated samples per second")
    demo_fail_share: float = Field(default=0.1, ge=0, le=1)
    demo_malformed_share: float = Field(default=0.02, ge=0, le=1, description="samples with a bad message")
    demo_correction_share: float = Field(default=0.05, ge=0, le=1, description="samples with a correction")

    log_level: str = "INFO"
    log_json: bool = False

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"{self.broker_host}:{self.broker_port}"

    @property
    def single_record_batches(self) -> bool:
        if self.one_record_batches is None:
            return self.embedded_broker
        return self.one_record_batches

    def group_id(self, name: str) -> str:
        return f"{self.topic_namespace}.{name}"

    @property
    def streams_app_id(self) -> str:
        """The stream processor's faust app id, which is also its consumer group."""
        return f"{self.topic_namespace}-streams"
