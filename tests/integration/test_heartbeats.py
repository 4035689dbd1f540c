"""Which heartbeats count: an earlier run's never satisfy `up`'s wait; deployments keep the 30 s window."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from adapters.runtime import _await_heartbeat
from adapters.store import Store
from spotcheck.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing for the stream processor `up` started."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


async def test_an_earlier_runs_heartbeat_does_not_satisfy_the_wait(
    settings: Settings, store: Store, child: subprocess.Popen[bytes]
) -> None:
    await store.heartbeat("streams", "host:spotcheck-streams")  # the crashed run's, a moment ago
    since = await store.heartbeat_epoch(forget_earlier=False)
    with pytest.raises(RuntimeError, match="did not start"):
        await _await_heartbeat(settings, "streams", child, since, timeout=1.0)
    assert "streams" in await store.live_components(30), "deployments: a heartbeat counts for 30 s"

    await store.heartbeat("streams", "host:spotcheck-streams")  # this run's stream processor joined
    await _await_heartbeat(settings, "streams", child, since, timeout=10.0)


async def test_up_owning_the_database_forgets_earlier_runs_heartbeats(store: Store) -> None:
    await store.heartbeat("verdicts", "host:4242")
    since = await store.heartbeat_epoch(forget_earlier=True)
    assert await store.live_components(30) == set()
    await store.heartbeat("verdicts", "host:4343")
    assert await store.live_components(30, since=since) == {"verdicts"}
