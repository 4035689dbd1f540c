"""The composition root: starts what the settings ask for, in order, and stops it in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog
from aiohttp import web
from pydantic import SecretStr
from rich.console import Console

from adapters import kafka
from adapters.embedded import EmbeddedBroker, EmbeddedPostgres
from adapters.processes import AlreadyRunning, Owned, UpLock, die_with_parent, port_is_free, stop_leftovers
from adapters.store import Store
from spotcheck.errors import SpotcheckError
from spotcheck.settings import Settings

log = structlog.get_logger(__name__)

ROLES = ("api", "relay", "verdicts", "sink", "push", "custody", "streams")
# the heartbeats /healthz requires
WORKER_COMPONENTS = ("relay", "verdicts", "store-sink", "center-push", "custody", "streams")


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("aiokafka", "kafka", "asyncio", "faust", "mode", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    renderer = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def admin_token(settings: Settings, console: Console | None = None) -> str:
    """The admin token: from the settings, else the one kept in the state folder, else a new one."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.state_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    if console is not None:
        console.print(f"[bold]admin token generated[/] (kept in {path}): {token}")
    return token


@dataclass
class Progress:
    """Readable start-up progress: one line per step with its duration."""

    console: Console
    started: float = field(default_factory=time.monotonic)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        t0 = time.monotonic()
        with self.console.status(f"{what}…"):
            yield
        self.console.print(f"[green]✓[/] {what} [dim]({time.monotonic() - t0:.1f}s)[/]")


@asynccontextmanager
async def infrastructure(
    settings: Settings, progress: Progress, owned: Owned, *, durable: bool = True
) -> AsyncIterator[Settings]:
    """Embedded broker and database when none is configured; yields settings that point at them.
    Their processes start from this (the main) thread, so they die with it (see `die_with_parent`),
    and are recorded in `owned`."""
    updates: dict[str, object] = {}
    broker: EmbeddedBroker | None = None
    database: EmbeddedPostgres | None = None
    try:
        if settings.embedded_broker:
            broker = EmbeddedBroker(
                settings.broker_host,
                settings.broker_port,
                settings.state_dir / "logs" / "broker.log",
            )
            with progress.step(f"embedded broker on {broker.bootstrap}"):
                owned.started("broker", broker.spawn(), "broker.pid")
                owned.listens("broker", broker.host, broker.port)
                await asyncio.to_thread(broker.wait_ready)
            updates["kafka_bootstrap"] = broker.bootstrap
            if settings.one_record_batches is None:  # the workers see a configured broker from here on
                updates["one_record_batches"] = True
        if settings.embedded_database:
            database = EmbeddedPostgres(
                settings.state_dir.resolve() / "pgdata", settings.embedded_db_port, durable=durable
            )
            with progress.step(f"embedded PostgreSQL on 127.0.0.1:{settings.embedded_db_port}"):
                await asyncio.to_thread(database.prepare)
                owned.started("PostgreSQL", database.spawn())  # its own pgdata/postmaster.pid names it
                owned.listens("database", database.host, database.port)
                await asyncio.to_thread(database.wait_ready)
            updates["database_url"] = SecretStr(database.url)
        yield settings.model_copy(update=updates)
    finally:
        if database is not None:
            await asyncio.to_thread(database.stop)
        if broker is not None:
            await asyncio.to_thread(broker.stop)


async def prepare(settings: Settings, progress: Progress) -> None:
    """Migrations, topics, and the outbox checked against the broker: all idempotent, all done
    before any worker starts (so nothing is published before a forgetful broker is noticed)."""
    from producers.relay import Relay

    async with Store(_db_url(settings), max_size=2) as store:
        with progress.step("database migrations"):
            await store.migrate()
        with progress.step(f"topics ({settings.topic_partitions} partitions)"):
            await kafka.create_topics(settings)
        with progress.step("outbox checked against the broker"):
            producer = kafka.producer(settings)
            await producer.start()
            try:
                again = await Relay(settings, store, producer).recover()
            finally:
                await producer.stop()
    if again:
        progress.console.print(f"  {again} accepted message(s) the broker had lost will be published again")


def _db_url(settings: Settings) -> str:
    if settings.database_url is None:
        raise RuntimeError("no database configured")
    return settings.database_url.get_secret_value()


def child_env(settings: Settings) -> dict[str, str]:
    """The environment for a worker process started by `up`: the effective settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        key = f"SPOTCHECK_{name.upper()}"
        if value is None:
            env.pop(key, None)
        elif isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        else:
            env[key] = str(value)
    return env


@asynccontextmanager
async def streams_process(settings: Settings, owned: Owned) -> AsyncIterator[subprocess.Popen[bytes]]:
    """The faust worker as a child process (it owns its event loop and signals). Killed if `up` dies:
    its graceful stop hangs on a broker that died too, and a kill loses nothing (tables rebuilt)."""
    log_path = settings.state_dir / "logs" / "streams.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spotcheck", "run", "streams"],
            env=child_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    try:
        owned.started("stream processor", proc.pid, "streams.pid")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


@asynccontextmanager
async def workers(
    settings: Settings, roles: tuple[str, ...], token: str, demo: bool = False
) -> AsyncIterator[dict[str, object]]:
    """The in-process workers (api, verdicts, sink, demo simulator); yields them by name."""
    from adapters.api.app import Api, create_app
    from consumers.base import BatchConsumer
    from consumers.centers import CenterPush
    from consumers.custody import CustodyProcessor
    from consumers.sink import StoreSink
    from consumers.verdicts import VerdictProcessor
    from producers.relay import Relay

    started: dict[str, object] = {}
    async with AsyncExitStack() as stack:
        store = Store(_db_url(settings), max_size=10)
        await store.start()
        stack.push_async_callback(store.stop)
        producer = kafka.producer(settings)
        await producer.start()
        stack.push_async_callback(producer.stop)
        if "relay" in roles:
            relay = Relay(settings, store, producer)
            await relay.start()
            stack.push_async_callback(relay.stop)  # stopped after the others: it publishes what they queued
            started["relay"] = relay
        consumers: list[BatchConsumer] = []
        if "verdicts" in roles:
            consumers.append(VerdictProcessor(settings, store, producer))
            started["verdicts"] = consumers[-1]
        if "sink" in roles:
            consumers.append(StoreSink(settings, store))
            started["sink"] = consumers[-1]
        if "push" in roles:
            consumers.append(CenterPush(settings, store, producer))
            started["push"] = consumers[-1]
        if "custody" in roles:
            consumers.append(CustodyProcessor(settings, store, producer))
            started["custody"] = consumers[-1]
        await asyncio.gather(*(c.start() for c in consumers))  # they join their groups together
        for c in consumers:
            stack.push_async_callback(c.stop)
        if "api" in roles:
            from adapters.custody import CustodyStore
            from adapters.labs import LabStore

            labs = LabStore(store, settings.lab_key_cache_seconds)
            custody = CustodyStore(store, settings.inspector_token_cache_seconds)
            api = Api(settings, store, producer, token, WORKER_COMPONENTS, labs=labs, custody=custody)
            app = create_app(api)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, settings.http_host, settings.http_port)
            await site.start()
            started["api"] = runner
        if demo:
            from producers.simulator import Simulator

            simulator = Simulator(settings, store, producer)
            await simulator.start()
            stack.push_async_callback(simulator.stop)
            started["simulator"] = simulator
        yield started


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[list[str]]:
    """From here on, SIGINT or SIGTERM cancels the current task once, so that every context
    entered so far unwinds and stops what it started (even in the middle of starting up).
    Yields the list the signal's name is put in; a second signal does not interrupt the stop."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    why: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if not why:
            why.append(sig.name)
            task.cancel()
        else:
            log.warning("already stopping", signal=sig.name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield why
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_until(done: Callable[[], bool] = lambda: False) -> None:
    """Until `done()` turns true (checked every second), or the task is cancelled by a signal."""
    while not done():  # noqa: ASYNC110 - `done` polls a child process
        await asyncio.sleep(1.0)


async def _await_heartbeat(
    settings: Settings, component: str, proc: subprocess.Popen[bytes], since: datetime, timeout: float = 120.0
) -> None:
    """Until `component` has written a heartbeat after `since` (it is running: an earlier run's
    heartbeat does not count), or its process died."""
    deadline = time.monotonic() + timeout
    async with Store(_db_url(settings), max_size=1) as store:
        while component not in await store.live_components(30, since=since):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{component} exited with code {proc.returncode}; "
                    f"see {settings.state_dir / 'logs' / f'{component}.log'}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{component} did not start within {timeout:.0f}s")
            await asyncio.sleep(0.2)


async def up(settings: Settings, demo: bool, console: Console) -> int:
    """`spotcheck up`: everything in one command, embedded services when none are configured.
    One `up` per state folder; what it starts is stopped, and checked to be gone, when it stops."""
    progress = Progress(console)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    lock = UpLock(settings.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        console.print(f"[red]spotcheck could not start: {exc}[/]")
        return 1
    owned = Owned(settings.state_dir)
    try:
        with stopped_by_signals() as why:
            try:
                await _up(settings, demo, console, progress, owned)
                why.append("the stream processor exited")
            except asyncio.CancelledError:
                if not why:
                    raise
            except (SpotcheckError, RuntimeError, OSError) as exc:
                console.print(f"[red]spotcheck could not start: {exc}[/]")
                why.append("a start-up error")
            left = await asyncio.to_thread(owned.still_running)
    finally:
        lock.release()
    checked = "nothing left running."
    if left:
        checked = f"[red]still running: {'; '.join(left)}[/] (the next `spotcheck up` stops it)."
    console.print(f"[bold]spotcheck stopped[/] ({why[0]}); {checked}")
    return 0 if why[0] in ("SIGINT", "SIGTERM") and not left else 1


async def _up(settings: Settings, demo: bool, console: Console, progress: Progress, owned: Owned) -> None:
    left = await asyncio.to_thread(stop_leftovers, settings.state_dir)
    if left:
        console.print(f"[yellow]stopped what an earlier run left running: {', '.join(left)}[/]")
    async with infrastructure(settings, progress, owned) as effective:
        await prepare(effective, progress)
        token = admin_token(effective, console)
        async with Store(_db_url(effective), max_size=1) as store:
            since = await store.heartbeat_epoch(forget_earlier=settings.embedded_database)
        async with streams_process(effective, owned) as streams, AsyncExitStack() as stack:
            roles = ("api", "relay", "verdicts", "sink", "push", "custody")
            if port_is_free(effective.http_host, effective.http_port):  # else the API fails to start
                owned.listens("HTTP API", effective.http_host, effective.http_port)
            with progress.step(
                "outbox relay, verdict processor, store sink, center push, custody processor"
                + (", lab simulator" if demo else "")
                + f" and HTTP API on http://{effective.http_host}:{effective.http_port}"
            ):
                await stack.enter_async_context(workers(effective, roles, token, demo))
            with progress.step("stream processor (faust worker) joined"):
                await _await_heartbeat(effective, "streams", streams, since)
            console.print(
                f"[bold green]spotcheck is up[/] in {time.monotonic() - progress.started:.1f}s: "
                f"http://{effective.http_host}:{effective.http_port}/healthz — "
                f"broker {effective.bootstrap}; logs in {effective.state_dir / 'logs'}. "
                "Ctrl-C stops everything."
            )
            try:
                await run_until(lambda: streams.poll() is not None)
            finally:
                console.print("stopping…")
        console.print(
            f"[red]the stream processor exited with {streams.returncode}; "
            f"see {effective.state_dir / 'logs' / 'streams.log'}[/]"
        )


def run_streams(settings: Settings) -> None:
    """`spotcheck run streams`: the faust worker in this process (blocks until stopped)."""
    from faust.worker import Worker

    from streams.app import create_app

    if settings.embedded_broker or settings.embedded_database:
        raise SystemExit("`spotcheck run streams` needs SPOTCHECK_KAFKA_BOOTSTRAP and SPOTCHECK_DATABASE_URL")

    app = create_app(settings)
    Path(app.conf.datadir).mkdir(parents=True, exist_ok=True)
    Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


async def run_roles(settings: Settings, roles: tuple[str, ...], console: Console) -> int:
    """`spotcheck run api|verdicts|sink|push|custody`: workers for deployments, on configured services."""
    if settings.embedded_broker or settings.embedded_database:
        console.print(
            "[red]`spotcheck run` needs SPOTCHECK_KAFKA_BOOTSTRAP and "
            "SPOTCHECK_DATABASE_URL; `spotcheck up` starts embedded ones[/]"
        )
        return 2
    token = admin_token(settings) if "api" in roles else ""
    with stopped_by_signals() as why:
        try:
            async with workers(settings, roles, token):
                console.print(f"running {', '.join(roles)}")
                await run_until()
        except asyncio.CancelledError:
            if not why:
                raise
    console.print(f"stopped ({why[0]})")
    return 0
