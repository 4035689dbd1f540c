"""The topic catalog says who owns each topic: one owner per topic read by the platform, and the
topics it only writes marked output-only."""

from __future__ import annotations

from adapters.runtime import WORKER_COMPONENTS
from consumers import centers, custody, sink, verdicts
from spotcheck.settings import Settings
from spotcheck.topics import (
    ACTIONS,
    ALERTS,
    CASE_INPUTS,
    CATALOG,
    CUSTODY,
    DEAD_LETTERS,
    DELIVERIES,
    DRAWS,
    LAB_RESULTS,
    REGISTRY,
    RELAY_EPOCHS,
    TASKS,
    VERDICTS,
    owner_of,
)
from streams.agents import COMPONENT as STREAMS


def test_every_input_topic_has_its_owner() -> None:
    assert TASKS.owner == LAB_RESULTS.owner == verdicts.GROUP
    assert CUSTODY.owner == custody.GROUP
    assert CASE_INPUTS.owner == STREAMS
    assert VERDICTS.owner == centers.GROUP
    assert ALERTS.owner == ACTIONS.owner == DEAD_LETTERS.owner == sink.GROUP


def test_output_only_topics_say_so() -> None:
    assert {t.name for t in CATALOG if t.output_only} == {
        DELIVERIES.name,
        REGISTRY.name,
        DRAWS.name,
        RELAY_EPOCHS.name,
    }
    assert all(t.owner is None for t in CATALOG if t.output_only)


def test_owners_are_components_of_the_platform() -> None:
    assert {t.owner for t in CATALOG if t.owner is not None} <= set(WORKER_COMPONENTS)


def test_each_consumer_owns_or_only_reads_its_topics() -> None:
    settings = Settings(topic_namespace="ns")
    assert owner_of(settings, "ns.tasks") == verdicts.GROUP
    assert owner_of(settings, "ns.verdicts") == centers.GROUP
    assert owner_of(settings, "ns.deliveries") is None
    assert owner_of(settings, "other.tasks") is None  # not a topic of this namespace
