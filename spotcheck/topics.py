"""The topic catalog, as data: each topic's name, key, value model and partitioning."""

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

    def full_name(self, settings: Settings) -> str:
        return f"{settings.topic_namespace}.{self.name}"


TASKS = Topic("tasks", "task_id", SamplingTask, "sampling tasks", copartitioned=True)
CUSTODY = Topic("custody", "task_id", CustodyStep, "chain-of-custody steps of a sample", copartitioned=True)
LAB_RESULTS = Topic("lab-results", "task_id", LabResult, "measured test items", copartitioned=True)
VERDICTS = Topic("verdicts", "task_id", Verdict, "verdicts of samples, versioned")
ACTIONS = Topic("actions", "enterprise_id", CaseEvent, "enforcement actions with their deadlines")
CASE_INPUTS = Topic(
    "case-inputs",
    "enterprise_id",
    CaseInput,
    "inputs of enforcement cases: verdicts and refusals re-keyed, objections, notices received, checks",
)
DELIVERIES = Topic("deliveries", "center_id", DeliveryAttempt, "outcomes of pushes to testing centers")
REGISTRY = Topic("registry", "record_id", RegistryChange, "changes of the directory of targets and staff")
DRAWS = Topic("draws", "draw_id", None, "published draws with their seed and directory digest")
ALERTS = Topic("alerts", "task_id", OverdueAlert, "overdue tasks and other deadline alerts")
DEAD_LETTERS = Topic("dead-letters", "source key", DeadLetter, "rejected input with the reason")
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


STREAMS = "streams"  # the stream processor (faust), whose group is its app id

READERS: dict[str, tuple[str, ...]] = {
    TASKS.name: ("verdicts", STREAMS),
    CUSTODY.name: ("custody", STREAMS),
    LAB_RESULTS.name: ("verdicts", "center-push"),
    VERDICTS.name: ("custody", "center-push", STREAMS),
    ACTIONS.name: ("store-sink",),
    CASE_INPUTS.name: (STREAMS,),
    ALERTS.name: ("store-sink",),
    DEAD_LETTERS.name: ("store-sink",),
}
"""The platform's consumer groups that read each topic (a topic not named here is read by none of
them): a message is processed once each of these groups has committed past it."""


def reader_groups(settings: Settings, topic: Topic) -> tuple[str, ...]:
    """The full group ids of the platform's readers of `topic`."""
    return tuple(
        settings.streams_app_id if reader == STREAMS else settings.group_id(reader)
        for reader in READERS.get(topic.name, ())
    )


def topic_names(settings: Settings) -> dict[str, str]:
    """Short name -> full topic name, for every topic of the catalog."""
    return {t.name: t.full_name(settings) for t in CATALOG}
