"""`spotcheck up` stopped under HTTP load, gracefully and by a crash: every result answered
`accepted` ends stored and judged after the restart, none twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from producers.bench import isolated_up_env
from tests.integration.helpers import GASOLINE_ITEMS
from tests.integration.test_up import _get, _post, _start_up, _wait

pytestmark = pytest.mark.integration

VALUES = {"ron": "92.6", "sulfur": "8.3", "benzene": "0.62"}
LAB = {"lab_id": "LAB-LOAD", "name": "load", "scope": [{"spec": "*"}]}


@dataclass
class Load:
    """What a load run sent and what the platform answered."""

    sent: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # result_id -> task_id
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed_requests: int = 0


async def _load(base: str, token: str, load: Load, stop: asyncio.Event, workers: int = 4) -> None:
    """Tasks and their three results over HTTP, as fast as the platform answers, until `stop` or
    the platform goes away."""
    headers = {"Authorization": f"Bearer {token}", "X-Spotcheck-Lab": LAB["lab_id"]}
    async with aiohttp.ClientSession(base_url=base, headers=headers) as http:

        async def one() -> None:
            while not stop.is_set():
                try:
                    async with http.post(
                        "/api/v1/tasks",
                        json={
                            "enterprise_id": "91370500MA3C000001",
                            "product": "92# motor gasoline",
                            "spec": "GB17930-2016:VIB:92",
                            "items": GASOLINE_ITEMS,
                            "lab_id": LAB["lab_id"],
                        },
                    ) as resp:
                        if resp.status != 201:
                            load.failed_requests += 1
                            continue
                        task = await resp.json()
                    load.tasks[task["task_id"]] = task
                    bodies = [
                        {
                            "result_id": f"LOAD-{uuid.uuid4().hex[:12]}",
                            "lab_id": LAB["lab_id"],
                            "task_id": task["task_id"],
                            "sample_id": task["sample_id"],
                            "item": item,
                            "value": VALUES[item],
                            "measured_at": datetime.now(UTC).isoformat(),
                        }
                        for item in GASOLINE_ITEMS
                    ]
                    load.sent += len(bodies)
                    async with http.post("/api/v1/lab-results", json={"results": bodies}) as resp:
                        if resp.status != 202:
                            load.failed_requests += 1
                            continue
                        answer = await resp.json()
                    for outcome in answer["outcomes"]:
                        if outcome["status"] == "accepted":
                            load.accepted[outcome["result_id"]] = task["task_id"]
                except (TimeoutError, aiohttp.ClientError, OSError):
                    load.failed_requests += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(one() for _ in range(workers)))


async def _stop_under_load(
    proc: subprocess.Popen[bytes], base: str, token: str, how: signal.Signals, after: float
) -> Load:
    load, stop = Load(), asyncio.Event()
    running = asyncio.create_task(_load(base, token, load, stop))
    await asyncio.sleep(after)
    proc.send_signal(how)
    await asyncio.to_thread(proc.wait, 60)
    await asyncio.sleep(0.5)  # requests in flight end (answered or refused)
    stop.set()
    await running
    return load


def _count_stored(base: str, token: str, load: Load) -> tuple[int, int, int]:
    """(results stored as accepted, tasks judged, verdict versions beyond the first)."""
    stored = sum(
        1
        for rid in load.accepted
        if (found := _get(f"{base}/api/v1/lab-results/{rid}", token))[0] == 200
        and found[1]["state"] == "accepted"
    )
    complete = {t for t in load.tasks if sum(1 for v in load.accepted.values() if v == t) == 3}
    judged = extra = 0
    for task_id in complete:
        status, view = _get(f"{base}/api/v1/tasks/{task_id}", token)
        if status == 200 and view["verdict"] is not None:
            judged += 1
            extra += len(view["verdict_history"]) - 1
    return stored, judged, extra


async def test_every_accepted_result_survives_a_graceful_stop_and_a_crash_under_load(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    env, ports = isolated_up_env(state)
    env.update({"SPOTCHECK_SESSION_TIMEOUT_MS": "6000", "SPOTCHECK_REBALANCE_TIMEOUT_MS": "3000"})
    base = f"http://127.0.0.1:{ports['SPOTCHECK_HTTP_PORT']}"
    healthy = lambda: _get(f"{base}/healthz")[0] == 200  # noqa: E731
    runs: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> tuple[subprocess.Popen[bytes], float]:
        t0 = time.monotonic()
        proc = _start_up(env, tmp_path / f"{name}.log", tmp_path)
        runs.append(proc)
        _wait(healthy, 180, f"{name} healthy", proc, tmp_path / f"{name}.log")
        return proc, time.monotonic() - t0

    try:
        first, _ = await asyncio.to_thread(start, "first")
        token = (state / "admin-token").read_text().strip()
        assert _post(f"{base}/api/v1/labs", LAB, token)[0] == 201
        graceful = await _stop_under_load(first, base, token, signal.SIGTERM, after=4.0)
        second, _ = await asyncio.to_thread(start, "second")
        crash = await _stop_under_load(second, base, token, signal.SIGKILL, after=4.0)
        third, recovered_in = await asyncio.to_thread(start, "third")

        for name, load in (("SIGTERM", graceful), ("SIGKILL", crash)):
            assert load.accepted, f"{name}: nothing was accepted before the stop"

            def settled(load: Load = load) -> tuple[int, int, int] | None:
                counts = _count_stored(base, token, load)
                return counts if counts[0] == len(load.accepted) else None

            try:
                stored, judged, extra = _wait(
                    settled, 120, f"{name}: accepted results stored", third, tmp_path / "third.log"
                )
            except AssertionError:
                stored, judged, extra = _count_stored(base, token, load)
            complete = sum(1 for t in load.tasks if sum(1 for v in load.accepted.values() if v == t) == 3)
            print(
                f"figures {name} under load: sent={load.sent} accepted={len(load.accepted)} "
                f"stored={stored} lost={len(load.accepted) - stored} complete_tasks={complete} "
                f"verdicts={judged} duplicate_verdicts={extra} refused_requests={load.failed_requests} "
                f"restart_to_healthy={recovered_in:.1f}s"
            )
            assert stored == len(load.accepted), (
                f"{name}: {len(load.accepted) - stored} accepted results lost"
            )
            assert judged == complete, f"{name}: {complete - judged} complete samples without a verdict"
            assert extra == 0, f"{name}: {extra} verdicts published twice"
        third.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(third.wait, 60) == 0
    finally:
        for proc in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
