"""Benchmarks: the verdict pipeline against a bare aiokafka passthrough, latency, start-up, failover,
and the memory of a long `up --demo` (soak).

Over 400 lines: the benchmarks share the stack, the workload and the processes they start, and
`spotcheck bench` runs each of them from here.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from adapters import kafka
from adapters.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from adapters.processes import is_streams, is_tansu, postmaster_of, recorded_process
from adapters.store import Store
from consumers.verdicts import VerdictProcessor
from producers.relay import Relay
from producers.simulator import demo_labs, demo_registry, register_demo_labs, simulated_results
from spotcheck.events import LabResult, SamplingTask
from spotcheck.settings import Settings
from spotcheck.tasks import TaskRequest, build_task
from spotcheck.topics import LAB_RESULTS, TASKS, VERDICTS


@dataclass(frozen=True)
class Workload:
    tasks: list[SamplingTask]
    results: list[LabResult]


def workload(samples: int, fail_share: float, zone: ZoneInfo, seed: int = 7) -> Workload:
    """`samples` demo tasks and one result per planned item (realistic sizes, ~250 bytes each)."""
    rng = random.Random(seed)
    registry = demo_registry()
    labs = demo_labs()
    now = datetime.now(UTC)
    tasks, results = [], []
    for n in range(1, samples + 1):
        offer = rng.choice(registry["offers"])
        request = TaskRequest(
            enterprise_id=rng.choice(registry["enterprises"])["enterprise_id"],
            product=offer["product"],
            spec=offer["spec"],
            lab_id=offer["lab_id"],
            sampled_at=now,
        )
        task = build_task(request, 500_000 + n, now, zone, labs[offer["lab_id"]])
        tasks.append(task)
        results.extend(
            simulated_results(task, now.astimezone(zone).date(), rng.random() < fail_share, rng, now)
        )
    return Workload(tasks, results)


@asynccontextmanager
async def bench_stack(settings: Settings, state: Path) -> AsyncIterator[Settings]:
    """Fresh topics (and an embedded broker and database unless configured) for one run."""
    broker = pg = None
    updates: dict[str, object] = {"topic_namespace": f"bench{uuid.uuid4().hex[:8]}"}
    try:
        if settings.embedded_broker:
            broker = EmbeddedBroker("127.0.0.1", free_port(), state / "broker.log")
            broker.start()
            updates["kafka_bootstrap"] = broker.bootstrap
        if settings.embedded_database:
            pg = EmbeddedPostgres(state / "pgdata", free_port(), durable=False)
            pg.start()
            updates["database_url"] = SecretStr(pg.url)
        effective = settings.model_copy(update=updates)
        await kafka.create_topics(effective)
        yield effective
    finally:
        if pg is not None:
            pg.stop()
        if broker is not None:
            broker.stop()


async def _produce(settings: Settings, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for i in range(0, len(messages), 5000):
            await kafka.publish(producer, topic, messages[i : i + 5000])
    finally:
        await producer.stop()


async def passthrough(settings: Settings, results: list[LabResult]) -> float:
    """Messages per second of a bare consume -> json decode -> produce loop over the same messages."""
    source, sink = f"{settings.topic_namespace}.bench-in", f"{settings.topic_namespace}.bench-out"
    await _produce(settings, source, [(r.task_id, r.to_json()) for r in results])
    consumer = kafka.consumer(
        settings, [source], f"bench-pass-{uuid.uuid4().hex[:6]}", max_poll_records=settings.batch_max_records
    )
    producer = kafka.producer(settings)
    await consumer.start()
    await producer.start()
    try:
        seen = 0
        started: float | None = None
        while seen < len(results):
            batch = await consumer.getmany(timeout_ms=200, max_records=settings.batch_max_records)
            records = [r for part in batch.values() for r in part]
            if not records:
                continue
            started = started or time.perf_counter()
            out = [
                (r.key.decode() if r.key else None, json.dumps(json.loads(r.value)).encode())
                for r in records
                if r.value is not None
            ]
            await kafka.publish(producer, sink, out)
            await consumer.commit()
            seen += len(records)
        return len(results) / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        await consumer.stop()
        await producer.stop()


async def pipeline(settings: Settings, load: Workload) -> tuple[float, int]:
    """Results per second through the verdict processor (judged, published, stored, committed)."""
    await _produce(settings, TASKS.full_name(settings), [(t.task_id, t.to_json()) for t in load.tasks])
    await _produce(
        settings, LAB_RESULTS.full_name(settings), [(r.task_id, r.to_json()) for r in load.results]
    )
    assert settings.database_url is not None
    async with Store(settings.database_url.get_secret_value()) as store:
        await store.migrate()
        await register_demo_labs(store)
        producer = kafka.producer(settings)
        await producer.start()
        processor = VerdictProcessor(settings, store, producer)
        relay = Relay(settings, store, producer)
        await relay.start()
        await processor.start()
        try:
            await processor.ready.wait()
            joined = time.perf_counter()
            while await store.verdict_count() < len(load.tasks):  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.02)
            while await _unpublished(store):  # noqa: ASYNC110 - the verdicts on their topic too
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - joined
        finally:
            await processor.stop()
            await relay.stop()
            await producer.stop()
    return len(load.results) / elapsed, len(load.tasks)


async def _unpublished(store: Store) -> int:
    async with store.transaction() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def latency(settings: Settings, samples: int) -> list[float]:
    """Seconds from the broker's receipt of a sample's last result to its verdict on the topic."""
    assert settings.database_url is not None
    zone = ZoneInfo(settings.timezone)
    load = workload(samples, 0.1, zone, seed=11)
    async with Store(settings.database_url.get_secret_value()) as store:
        await store.migrate()
        await register_demo_labs(store)
        producer = kafka.producer(settings, linger_ms=0)
        await producer.start()
        processor = VerdictProcessor(settings, store, producer)
        relay = Relay(settings, store, producer)
        await relay.start()
        await processor.start()
        watcher = AIOKafkaConsumer(
            VERDICTS.full_name(settings), bootstrap_servers=settings.bootstrap, auto_offset_reset="latest"
        )
        await watcher.start()
        try:
            await processor.ready.wait()
            await watcher.seek_to_end()
            found = []
            by_task: dict[str, list[LabResult]] = {}
            for r in load.results:
                by_task.setdefault(r.task_id, []).append(r)
            for task in load.tasks:
                await kafka.publish(producer, TASKS.full_name(settings), [(task.task_id, task.to_json())])
                *first, last = by_task[task.task_id]
                await kafka.publish(
                    producer, LAB_RESULTS.full_name(settings), [(r.task_id, r.to_json()) for r in first]
                )
                meta = await (
                    await producer.send(
                        LAB_RESULTS.full_name(settings), last.to_json(), key=last.task_id.encode()
                    )
                )
                sent_ms = meta.timestamp
                message = await asyncio.wait_for(watcher.getone(), 30)
                found.append((message.timestamp - sent_ms) / 1000)
            return found
        finally:
            await watcher.stop()
            await processor.stop()
            await relay.stop()
            await producer.stop()


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, n={len(ordered)}"


def isolated_up_env(state: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The environment for a `spotcheck up` of its own: embedded broker and database on free ports,
    state in `state`, no configured services or token. Returns (environment, ports by variable)."""
    import os

    ports = {
        name: free_port()
        for name in ("SPOTCHECK_BROKER_PORT", "SPOTCHECK_EMBEDDED_DB_PORT", "SPOTCHECK_HTTP_PORT")
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SPOTCHECK_KAFKA_BOOTSTRAP", "SPOTCHECK_DATABASE_URL", "SPOTCHECK_ADMIN_TOKEN")
    }
    env.update({k: str(v) for k, v in ports.items()})
    env["SPOTCHECK_STATE_DIR"] = str(state)
    return env, ports


def startup(state: Path, demo: bool = False) -> tuple[float, float]:
    """Seconds from starting `spotcheck up` (embedded everything, fresh state folder) to /healthz
    answering 200, and from SIGTERM to the process tree being gone."""
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    env, ports = isolated_up_env(state)
    url = f"http://127.0.0.1:{ports['SPOTCHECK_HTTP_PORT']}/healthz"
    args = [sys.executable, "-m", "spotcheck", "up"] + (["--demo"] if demo else [])
    started = time.perf_counter()
    with (state.parent / "up.log").open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                log = (state.parent / "up.log").read_text()[-2000:]
                raise RuntimeError(f"spotcheck up exited with {proc.returncode}:\n{log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        healthy = time.perf_counter() - started
    finally:
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    if code != 0:
        raise RuntimeError(
            f"spotcheck up stopped with {code}:\n{(state.parent / 'up.log').read_text()[-2000:]}"
        )
    return healthy, time.perf_counter() - stopping


class VerdictWorker:
    """`spotcheck run verdicts` in a process of its own, as deployments run it, logging JSON lines."""

    def __init__(self, settings: Settings, log: Path) -> None:
        import subprocess
        import sys

        from adapters.runtime import child_env

        env = child_env(settings) | {"SPOTCHECK_LOG_JSON": "true", "SPOTCHECK_LOG_LEVEL": "INFO"}
        self.log = log
        self.topic = LAB_RESULTS.full_name(settings)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spotcheck", "run", "verdicts"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def assignments(self) -> list[tuple[float, frozenset[int]]]:
        """Every assignment so far: (unix time, partitions of lab-results), oldest first."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line) if line.startswith("{") else {}
            except json.JSONDecodeError:  # the line being written
                continue
            if entry.get("event") == "partitions assigned":
                at = datetime.fromisoformat(entry["timestamp"]).timestamp()
                parts = (p.rpartition(":") for p in entry["partitions"])
                found.append((at, frozenset(int(n) for topic, _, n in parts if topic == self.topic)))
        return found

    def assigned(self) -> frozenset[int]:
        if self.proc.poll() is not None:
            raise RuntimeError(f"verdict worker exited with {self.proc.returncode}: see {self.log}")
        found = self.assignments()
        return found[-1][1] if found else frozenset()

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 60)


@dataclass(frozen=True)
class Failover:
    expected: int  # samples, one verdict each
    stored: int  # samples with a stored verdict
    duplicated: int  # stored verdicts beyond one per sample
    resent: int  # verdicts on the topic more than once (at-least-once; the store keeps one)
    killed: frozenset[int]  # partitions of the killed worker
    reassigned: float  # seconds from the kill to the survivor's assignment of them
    first_verdict: float  # seconds from the kill to the survivor's first verdict on one of them


async def _watch_verdicts(settings: Settings, seen: list[tuple[str, str, int, int]]) -> None:
    """Appends (task_id, verdict_id, partition, broker timestamp ms) of every verdict, until cancelled."""
    watcher = AIOKafkaConsumer(
        VERDICTS.full_name(settings), bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest"
    )
    await watcher.start()
    try:
        while True:
            batch = await watcher.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    body = json.loads(r.value or b"{}")
                    seen.append((body["task_id"], body["verdict_id"], r.partition, r.timestamp))
    finally:
        await watcher.stop()


async def failover(settings: Settings, folder: Path, load: Workload, rate: float) -> Failover:
    """Two verdict workers share the group; lab results stream in at `rate` samples a second; one
    worker is killed (SIGKILL) when half the samples are sent. Waits until every sample has its
    verdict stored (or none came for a minute) and says what the survivor took over, and when."""
    assert settings.database_url is not None
    async with Store(settings.database_url.get_secret_value()) as store:
        await store.migrate()
        await register_demo_labs(store)
        producer = kafka.producer(settings, linger_ms=0)
        await producer.start()
        relay = Relay(settings, store, producer)  # the workers' verdicts leave through the outbox
        await relay.start()
        workers = [VerdictWorker(settings, folder / f"verdicts-{n}.log") for n in (1, 2)]
        seen: list[tuple[str, str, int, int]] = []
        watching = asyncio.create_task(_watch_verdicts(settings, seen))
        try:
            topic = TASKS.full_name(settings)
            sent = [await producer.send(topic, t.to_json(), key=t.task_id.encode()) for t in load.tasks]
            partition = {t.task_id: (await f).partition for t, f in zip(load.tasks, sent, strict=True)}
            everything = frozenset(range(settings.topic_partitions))
            deadline = time.monotonic() + 120
            while True:  # until the two share the partitions
                one, two = (w.assigned() for w in workers)
                if one and two and not one & two and one | two == everything:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the workers did not share the partitions: {one}, {two}")
                await asyncio.sleep(0.1)
            victim, survivor = workers
            killed: frozenset[int] = frozenset()
            by_task: dict[str, list[tuple[str, bytes]]] = {}
            for r in load.results:
                by_task.setdefault(r.task_id, []).append((r.task_id, r.to_json()))
            results_topic, started = LAB_RESULTS.full_name(settings), time.monotonic()
            killed_at = 0.0
            for n, task in enumerate(load.tasks):
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                if n == len(load.tasks) // 2:
                    killed, killed_at = victim.assigned(), time.time()
                    victim.kill()
                await kafka.publish(producer, results_topic, by_task[task.task_id])

            count, progress_at = -1, time.monotonic()
            while time.monotonic() - progress_at < 60:  # until every sample's verdict is in
                stored = await store.list_verdicts(all_versions=True, limit=10 * len(load.tasks) + 10)
                done = {v["task_id"] for v in stored}
                if len(done) == len(load.tasks) and {s[0] for s in seen} >= done:
                    break
                if len(stored) != count:
                    count, progress_at = len(stored), time.monotonic()
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # late re-sends
            stored = await store.list_verdicts(all_versions=True, limit=10 * len(load.tasks) + 10)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            for w in workers:
                if w.proc.poll() is None:
                    await w.stop()
            await relay.stop()
            await producer.stop()

    taken = [at for at, parts in survivor.assignments() if at >= killed_at and killed <= parts]
    since = min(taken, default=killed_at)  # the survivor's verdicts, not the last ones of the dead
    after = [ts / 1000 - killed_at for task_id, _, _, ts in seen if partition[task_id] in killed]
    after = [s for s in after if s >= since - killed_at]
    ids = [s[1] for s in seen]
    return Failover(
        expected=len(load.tasks),
        stored=len({v["task_id"] for v in stored}),
        duplicated=len(stored) - len({v["task_id"] for v in stored}),
        resent=len(ids) - len(set(ids)),
        killed=killed,
        reassigned=(min(taken) - killed_at) if taken else float("nan"),
        first_verdict=min(after) if after else float("nan"),
    )


# --- soak: memory of a long `up --demo` ------------------------------------------------------

SOAK_PROCESSES = ("up", "streams", "broker", "postgres")
MIB = 1024 * 1024


@dataclass(frozen=True)
class MemorySample:
    """One look at the processes of a running `up --demo`: seconds since the measure began (after
    the warm-up), verdicts stored so far, and memory by process name in bytes: resident (RSS) and
    proportional (PSS: shared pages divided among the processes that share them). PostgreSQL is its
    postmaster and every backend, summed; its RSS sum counts shared buffers once per backend."""

    seconds: float
    verdicts: int
    rss: dict[str, int]
    pss: dict[str, int]

    def shown(self, name: str) -> int:
        """The figure the soak table shows: PSS for PostgreSQL (many processes), RSS for the others."""
        return self.pss[name] if name == "postgres" else self.rss[name]


@dataclass(frozen=True)
class Growth:
    """What one process did over a soak: MiB at the start and the end, MiB per 1,000 verdicts over the
    whole run and (least squares) over its last half; a flat process has a last-half slope near 0."""

    name: str
    start: float
    end: float
    per_1000: float
    last_half_per_1000: float


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; nan with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return float("nan")
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def growth(samples: list[MemorySample]) -> list[Growth]:
    """Per process: start, end, growth per 1,000 verdicts, and the slope over the last half of the
    run (samples at or after half the measured time) against verdicts."""
    first, last = samples[0], samples[-1]
    half = [s for s in samples if s.seconds >= last.seconds / 2]
    made = (last.verdicts - first.verdicts) / 1000
    found = []
    for name in SOAK_PROCESSES:
        start, end = first.shown(name) / MIB, last.shown(name) / MIB
        found.append(
            Growth(
                name=name,
                start=start,
                end=end,
                per_1000=(end - start) / made if made > 0 else float("nan"),
                last_half_per_1000=_slope([(s.verdicts / 1000, s.shown(name) / MIB) for s in half]),
            )
        )
    return found


class SoakedProcesses:
    """The processes of one `up --demo`, found by what they are (pid files of the state folder)."""

    def __init__(self, up_pid: int, state: Path) -> None:
        self.up = psutil.Process(up_pid)
        run = state / "run"
        found = {
            "streams": recorded_process(run / "streams.pid", is_streams),
            "broker": recorded_process(run / "broker.pid", is_tansu),
            "postgres": recorded_process(
                state / "pgdata" / "postmaster.pid", postmaster_of(state / "pgdata"), timed=False
            ),
        }
        missing = [name for name, proc in found.items() if proc is None]
        if missing:
            raise RuntimeError(f"spotcheck up runs without {', '.join(missing)}")
        self.streams, self.broker, self.postmaster = (found[n] for n in ("streams", "broker", "postgres"))

    def memory(self) -> tuple[dict[str, int], dict[str, int]]:
        """(RSS, PSS) by name, in bytes; PostgreSQL summed over the postmaster and its children."""
        rss: dict[str, int] = {}
        pss: dict[str, int] = {}
        groups = {"up": [self.up], "streams": [self.streams], "broker": [self.broker]}
        assert self.postmaster is not None
        groups["postgres"] = [self.postmaster, *self.postmaster.children(recursive=True)]
        for name, procs in groups.items():
            rss[name] = pss[name] = 0
            for proc in procs:
                assert proc is not None
                try:
                    info = proc.memory_full_info()
                except psutil.NoSuchProcess:  # a backend that just ended
                    continue
                rss[name] += info.rss
                pss[name] += getattr(info, "pss", info.rss)
        return rss, pss


async def soak(
    state: Path,
    minutes: float,
    every: float,
    rate: float,
    warmup: float,
    on_sample: Callable[[MemorySample], None] = lambda _: None,
) -> list[MemorySample]:
    """Runs `spotcheck up --demo` (its own ports and state folder, the simulator at `rate` samples
    a second) and looks at its processes' memory and the verdicts stored every `every` seconds for
    `minutes`, after `warmup` seconds; then stops it with SIGTERM. The samples, oldest first."""
    import asyncpg

    env, ports = isolated_up_env(state)
    env["SPOTCHECK_DEMO_RATE"] = str(rate)
    env["SPOTCHECK_LOG_LEVEL"] = "WARNING"
    log_path = state.parent / "up.log"
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "spotcheck",
            "up",
            "--demo",
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )

    def check_alive() -> None:
        if proc.returncode is not None:
            raise RuntimeError(f"spotcheck up exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")

    samples: list[MemorySample] = []
    try:
        await _until_healthy(ports["SPOTCHECK_HTTP_PORT"], check_alive)
        processes = SoakedProcesses(proc.pid, state)
        db = await asyncpg.connect(
            f"postgresql://postgres@127.0.0.1:{ports['SPOTCHECK_EMBEDDED_DB_PORT']}/spotcheck"
        )
        try:
            await asyncio.sleep(warmup)
            began = time.monotonic()
            while True:
                check_alive()
                rss, pss = processes.memory()
                verdicts = int(await db.fetchval("SELECT count(*) FROM verdicts"))
                sample = MemorySample(round(time.monotonic() - began, 1), verdicts, rss, pss)
                samples.append(sample)
                on_sample(sample)
                left = minutes * 60 - (time.monotonic() - began)
                if left <= 0.5:
                    break
                await asyncio.sleep(min(every, left))
        finally:
            await db.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return samples


async def _until_healthy(port: int, check_alive: Callable[[], None], timeout: float = 180.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            check_alive()
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"spotcheck up was not healthy within {timeout:.0f}s")
            await asyncio.sleep(0.5)
