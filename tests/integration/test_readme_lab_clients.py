"""The README's Kafka client examples for labs, run as written: a result meets its task's partition."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from adapters import kafka
from spotcheck.settings import Settings
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### With the lab's own Kafka client"
# The example's own task id first; more keys so that a partitioner agreeing by chance is caught.
TASK_IDS = ["T-2026-000042"] + [f"T-2026-{n:06d}" for n in range(43, 50)]


def readme_example(library: str) -> str:
    """The Python code block of the README's lab-client section that imports `library`."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n### ", start + len(SECTION))
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.DOTALL)
    found = [b for b in blocks if re.search(rf"^from {library} import", b, flags=re.MULTILINE)]
    assert len(found) == 1, f"expected one {library} example in {SECTION!r}, found {len(found)}"
    return found[0]


def substituted(code: str, replacements: dict[str, str]) -> str:
    """`code` with each literal replaced; every one must be there (the example must not drift)."""
    for old, new in replacements.items():
        assert old in code, f"the README example no longer contains {old}"
        code = code.replace(old, new)
    return code


def run_example(code: str, name: str) -> None:
    """Runs the example as a script would (in a thread of its own: it may call asyncio.run)."""
    exec(compile(code, f"README.md ({name} example)", "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("library", ["confluent_kafka", "aiokafka"])
async def test_a_result_sent_as_in_the_readme_lands_on_its_tasks_partition(
    settings: Settings, producer: AIOKafkaProducer, library: str
) -> None:
    example = readme_example(library)
    tasks_topic = f"{settings.topic_namespace}.tasks"
    for task_id in TASK_IDS:
        # the task, published by the platform's own producer
        await kafka.publish(producer, tasks_topic, [(task_id, json.dumps({"task_id": task_id}).encode())])
        # the result, sent by the lab's client exactly as the README shows it
        code = substituted(
            example,
            {
                '"127.0.0.1:9092"': json.dumps(settings.bootstrap),
                '"spotcheck.lab-results"': json.dumps(f"{settings.topic_namespace}.lab-results"),
                "T-2026-000042": task_id,
            },
        )
        await asyncio.to_thread(run_example, code, library)

    def every_key(records: list[object]) -> bool:
        return {r.key.decode() for r in records} >= set(TASK_IDS)  # type: ignore[attr-defined]

    tasks = {r.key.decode(): r.partition for r in await read_topic(settings, "tasks", every_key)}
    results = await read_topic(settings, "lab-results", every_key)
    assert len(results) == len(TASK_IDS)
    landed = {r.key.decode(): r.partition for r in results}
    assert all(json.loads(r.value)["task_id"] == r.key.decode() for r in results)
    assert landed == tasks, f"results landed on other partitions than their tasks: {landed} vs {tasks}"
