"""`spotcheck up --demo` as a newcomer runs it: embedded everything, healthy, alive, clean stop."""

from __future__ import annotations

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

from adapters.embedded import port_is_free
from producers.bench import isolated_up_env

pytestmark = pytest.mark.integration


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


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
        assert body["checks"] == {
            "broker": "up",
            "database": "up",
            "relay": "up",
            "verdicts": "up",
            "store-sink": "up",
            "center-push": "up",
            "custody": "up",
            "streams": "up",
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
