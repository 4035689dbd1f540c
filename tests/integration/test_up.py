"""`spotcheck up --demo` as a newcomer runs it: embedded everything, healthy, alive, clean stop."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import SecretStr
from rich.console import Console

from adapters import processes
from adapters.embedded import EmbeddedPostgres, free_port, port_is_free
from adapters.runtime import Progress, child_env, infrastructure
from producers.bench import isolated_up_env
from spotcheck.settings import Settings
from tests.integration.helpers import report_figures

pytestmark = pytest.mark.integration

SLEEP = "import time; time.sleep(300)"


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def _post(url: str, body: Any, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait(probe: Any, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"spotcheck up exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} not within {timeout}s:\n{log.read_text()[-4000:]}")


def test_up_demo_is_healthy_produces_verdicts_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env, ports = isolated_up_env(state)
    env.update(
        {
            "SPOTCHECK_DEMO_RATE": "5",
            "SPOTCHECK_SESSION_TIMEOUT_MS": "6000",
            "SPOTCHECK_REBALANCE_TIMEOUT_MS": "3000",
        }
    )
    base = f"http://127.0.0.1:{ports['SPOTCHECK_HTTP_PORT']}"
    log = tmp_path / "up.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spotcheck", "up", "--demo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        health = _wait(lambda: _get(f"{base}/healthz")[0] == 200, 120, "healthy", proc, log)
        assert health
        to_healthy = time.monotonic() - started
        token = (state / "admin-token").read_text().strip()
        assert token in log.read_text(), "the generated token is printed"
        status, body = _get(f"{base}/healthz")
        assert {name: check["state"] for name, check in body["checks"].items()} == {
            "broker": "up",
            "database": "up",
            "outbox": "up",
            "relay": "up",
            "verdicts": "up",
            "store-sink": "up",
            "center-push": "up",
            "custody": "up",
            "streams": "up",
            "set-aside": "up",
        }
        assert _get(f"{base}/api/v1/verdicts")[0] == 401
        verdicts = _wait(
            lambda: _get(f"{base}/api/v1/verdicts", token)[1]["verdicts"],
            60,
            "demo verdicts",
            proc,
            log,
        )
        assert {v["outcome"] for v in verdicts} <= {"qualified", "unqualified"}
        rates = _wait(
            lambda: _get(f"{base}/api/v1/stats/pass-rates", token)[1]["pass_rates"],
            60,
            "pass rates from the stream processor",
            proc,
            log,
        )
        assert all(r["qualified"] + r["unqualified"] > 0 for r in rates)
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert "spotcheck_verdict_latency_seconds_count" in metrics
        assert "spotcheck_events_in_total" in metrics
        print(f"up -> healthy in {to_healthy:.1f}s")
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-4000:]
    assert "spotcheck stopped (SIGTERM); nothing left running" in log.read_text()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.info for p in alive]}"
    taken = [name for name, p in ports.items() if not port_is_free("127.0.0.1", p)]
    assert not taken, f"ports still taken: {taken}"


def test_sigterm_in_the_middle_of_starting_leaves_nothing_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env, ports = isolated_up_env(state)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spotcheck", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    # stop it once the broker and the database run and the workers are being started
    _wait(lambda: "topics" in log.read_text(), 60, "topics created", proc, log)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("tansu" in " ".join(c.cmdline()) for c in children)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert "spotcheck stopped (SIGTERM); nothing left running" in log.read_text()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    postgres = [
        p for p in psutil.process_iter(["cmdline"]) if str(state) in " ".join(p.info["cmdline"] or [])
    ]
    assert not postgres, "the embedded PostgreSQL is still running"
    assert all(port_is_free("127.0.0.1", p) for p in ports.values())


def _start_up(env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "spotcheck", "up"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )


def _run_processes(proc: subprocess.Popen[bytes], state: Path) -> list[psutil.Process]:
    """The processes of a running `up`: its children, and the PostgreSQL server its state folder's
    postmaster.pid names (should it not be a child)."""
    found = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
    pidfile = state / "pgdata" / "postmaster.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().split()[0])
        if psutil.pid_exists(pid):
            found.setdefault(pid, psutil.Process(pid))
    return list(found.values())


def test_a_crashed_up_leaves_nothing_running_and_restarts_on_the_same_ports(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env, ports = isolated_up_env(state)
    env.update({"SPOTCHECK_SESSION_TIMEOUT_MS": "6000", "SPOTCHECK_REBALANCE_TIMEOUT_MS": "3000"})
    base = f"http://127.0.0.1:{ports['SPOTCHECK_HTTP_PORT']}"
    healthy = lambda: _get(f"{base}/healthz")[0] == 200  # noqa: E731
    spawned: list[psutil.Process] = []
    left_db: EmbeddedPostgres | None = None
    first = _start_up(env, tmp_path / "first.log", tmp_path)
    try:
        _wait(healthy, 120, "healthy", first, tmp_path / "first.log")
        token = (state / "admin-token").read_text().strip()
        lab = {"lab_id": "LAB-CRASH", "name": "kept across a crash", "scope": [{"spec": "*"}]}
        assert _post(f"{base}/api/v1/labs", lab, token)[0] == 201
        crashed = _run_processes(first, state)
        spawned += crashed
        names = " ".join(" ".join(p.cmdline()) for p in crashed)
        assert "tansu" in names and "run streams" in names and "postgres" in names, names

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        left = processes.wait_gone(crashed, 10)
        assert not left, f"left running after a crash: {[(p.pid, p.cmdline()) for p in left]}"
        gone_in = time.monotonic() - killed_at

        # where children cannot be tied to their parent (elsewhere than Linux), a crash leaves them
        # running: the restart finds them by their pid files and stops them, and leaves alone a
        # process that merely got a recorded pid
        left_db = EmbeddedPostgres(state.resolve() / "pgdata", ports["SPOTCHECK_EMBEDDED_DB_PORT"])
        left_db.start()
        assert left_db.pid is not None
        left_postgres = psutil.Process(left_db.pid)
        left_streams = subprocess.Popen([sys.executable, "-c", SLEEP, "spotcheck", "run", "streams"])
        bystander = subprocess.Popen([sys.executable, "-c", SLEEP])
        spawned += [psutil.Process(p.pid) for p in (left_streams, bystander)]
        processes.write_pid_file(state / "run" / "streams.pid", left_streams.pid)
        processes.write_pid_file(state / "run" / "broker.pid", bystander.pid)

        restarted_at = time.monotonic()
        second = _start_up(env, tmp_path / "second.log", tmp_path)
        spawned.append(psutil.Process(second.pid))
        _wait(healthy, 120, "healthy after the crash", second, tmp_path / "second.log")
        healthy_in = time.monotonic() - restarted_at
        assert left_streams.poll() is not None and not processes.alive(left_postgres), "leftovers still run"
        assert bystander.poll() is None, "an unrelated process was stopped"
        said = " ".join((tmp_path / "second.log").read_text().split())
        assert f"stream processor (pid {left_streams.pid}), PostgreSQL (pid {left_postgres.pid})" in said
        status, body = _get(f"{base}/api/v1/labs/LAB-CRASH", token)
        assert status == 200 and body["name"] == "kept across a crash", (status, body)
        report_figures(
            "SIGKILL of up: what it started, then a restart on the same ports and state folder",
            processes_started=len(crashed),
            left_running=0,
            gone_in_s=round(gone_in, 1),
            restart_to_healthy_s=round(healthy_in, 1),
            data_kept=True,
        )
        spawned += _run_processes(second, state)

        # a second `up` on the same state folder refuses, naming the running one, and leaves it be
        third = subprocess.run(
            [sys.executable, "-m", "spotcheck", "up"], env=env, capture_output=True, text=True, timeout=60
        )
        said = " ".join((third.stdout + third.stderr).split())  # the console wraps long lines
        assert third.returncode != 0
        assert "already running" in said and f"(pid {second.pid})" in said, said
        assert healthy() and second.poll() is None

        running = _run_processes(second, state)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, (tmp_path / "second.log").read_text()[-4000:]
        assert "nothing left running" in " ".join((tmp_path / "second.log").read_text().split())
        left = processes.wait_gone(running, 10)
        assert not left, f"left running: {[(p.pid, p.cmdline()) for p in left]}"
        assert all(port_is_free("127.0.0.1", p) for p in ports.values())
    finally:
        if left_db is not None:
            left_db.stop()
        for p in [psutil.Process(first.pid)] if first.poll() is None else []:
            p.kill()
        for p in spawned:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


async def test_workers_of_an_embedded_broker_send_one_record_per_batch(
    tmp_path: Path, server_url: str
) -> None:
    """The embedded broker's watermark needs one record per batch from the stream processor; the
    workers `up` starts see the broker as configured, so the setting must be decided for them."""
    settings = Settings(database_url=SecretStr(server_url), state_dir=tmp_path, broker_port=free_port())
    assert settings.single_record_batches
    progress = Progress(Console(quiet=True))
    async with infrastructure(settings, progress, processes.Owned(tmp_path)) as effective:
        assert not effective.embedded_broker
        assert effective.single_record_batches
        assert child_env(effective)["SPOTCHECK_ONE_RECORD_BATCHES"] == "True"
