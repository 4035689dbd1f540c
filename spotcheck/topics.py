"""The topic catalog, as data: each topic's name, key, value model, partitioning and owner."""

from __future__ import annotations

from dataclasses import dataclass

from spotcheck.case_model import CaseEvent, CaseInput
from spotcheck.centers import DeliveryAttempt
from spotcheck.custody import CustodyStep
from spotcheck.deadlines import OverdueAlert
from spotcheck.events import DeadLetter, Event, LabResult, SamplingTask, Verdict
from spotcheck.registry import RegistryChange
from spotcheck.settings import Settings


@dataclass(frozen=True)
class Topic:
    name: str  # without the namespace, e.g. "lab-results"
    key: str  # the field the key is taken from
    model: type[Event] | None  # None: the value schema is owned by a later part of the platform
    description: str
    copartitioned: bool = False  # keyed by task_id with the same partition count as its peers
    owner: str | None = None
    """The component (consumer group) that checks every record of this topic against `model` (schema
    name and version included) and makes a dead letter of one it cannot read: that one alone, other
    readers skip such a record quietly. None: the platform only writes this topic (output-only)."""

    def full_name(self, settings: Settings) -> str:
        return f"{settings.topic_namespace}.{self.name}"

    @property
    def output_only(self) -> bool:
        return self.owner is None


# The owners, by the names their consumer groups and heartbeats go by.
VERDICT_PROCESSOR = "verdicts"
CUSTODY_PROCESSOR = "custody"
STREAM_PROCESSOR = "streams"
STORE_SINK = "store-sink"
CENTER_PUSH = "center-push"

TASKS = Topic("tasks", "task_id", SamplingTask, "sampling tasks", copartitioned=True, owner=VERDICT_PROCESSOR)
CUSTODY = Topic(
    "custody",
    "task_id",
    CustodyStep,
    "chain-of-custody steps of a sample",
    copartitioned=True,
    owner=CUSTODY_PROCESSOR,
)
LAB_RESULTS = Topic(
    "lab-results", "task_id", LabResult, "measured test items", copartitioned=True, owner=VERDICT_PROCESSOR
)
# Written by the verdict processor; read by the custody processor, the stream processor and the
# center push, which owns it: it hands verdicts on to the centers, who build against verdict/1.
VERDICTS = Topic("verdicts", "task_id", Verdict, "verdicts of samples, versioned", owner=CENTER_PUSH)
ACTIONS = Topic(
    "actions", "enterprise_id", CaseEvent, "enforcement actions with their deadlines", owner=STORE_SINK
)
CASE_INPUTS = Topic(
    "case-inputs",
    "enterprise_id",
    CaseInput,
    "inputs of enforcement cases: verdicts and refusals re-keyed, objections, notices received, checks",
    owner=STREAM_PROCESSOR,
)
DELIVERIES = Topic("deliveries", "center_id", DeliveryAttempt, "outcomes of pushes to testing centers")
REGISTRY = Topic("registry", "record_id", RegistryChange, "changes of the directory of targets and staff")
DRAWS = Topic("draws", "draw_id", None, "published draws with their seed and directory digest")
ALERTS = Topic("alerts", "task_id", OverdueAlert, "overdue tasks and other deadline alerts", owner=STORE_SINK)
DEAD_LETTERS = Topic(
    "dead-letters", "source key", DeadLetter, "rejected input with the reason", owner=STORE_SINK
)
RELAY_EPOCHS = Topic(
    "relay-epochs", "epoch", None, "the outbox relay's marks: a broker without the last one lost everything"
)

CATALOG: tuple[Topic, ...] = (
    TASKS,
    CUSTODY,
    LAB_RESULTS,
    VERDICTS,
    ACTIONS,
    CASE_INPUTS,
    DELIVERIES,
    REGISTRY,
    DRAWS,
    ALERTS,
    DEAD_LETTERS,
    RELAY_EPOCHS,
)


READERS: dict[str, tuple[str, ...]] = {
    TASKS.name: (VERDICT_PROCESSOR, STREAM_PROCESSOR),
    CUSTODY.name: (CUSTODY_PROCESSOR, STREAM_PROCESSOR),
    LAB_RESULTS.name: (VERDICT_PROCESSOR, CENTER_PUSH),
    VERDICTS.name: (CUSTODY_PROCESSOR, CENTER_PUSH, STREAM_PROCESSOR),
    ACTIONS.name: (STORE_SINK,),
    CASE_INPUTS.name: (STREAM_PROCESSOR,),
    ALERTS.name: (STORE_SINK,),
    DEAD_LETTERS.name: (STORE_SINK,),
}
"""The platform's consumer groups that read each topic (a topic not named here is read by none of
them): a message is processed once each of these groups has committed past it."""


def reader_groups(settings: Settings, topic: Topic) -> tuple[str, ...]:
    """The full group ids of the platform's readers of `topic`."""
    return tuple(
        settings.streams_app_id if reader == STREAM_PROCESSOR else settings.group_id(reader)
        for reader in READERS.get(topic.name, ())
    )


def topic_names(settings: Settings) -> dict[str, str]:
    """Short name -> full topic name, for every topic of the catalog."""
    return {t.name: t.full_name(settings) for t in CATALOG}


def owner_of(settings: Settings, full_name: str) -> str | None:
    """The owner of a topic named in full (None: output-only, or not a topic of the catalog)."""
    for topic in CATALOG:
        if topic.full_name(settings) == full_name:
            return topic.owner
    return None
