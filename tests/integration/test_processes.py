"""What `up` owns, on real processes: children that die with their parent, pid files that name a
process only while it is that process, leftovers stopped, one `up` per state folder."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from adapters.processes import (
    AlreadyRunning,
    Owned,
    UpLock,
    is_streams,
    is_tansu,
    recorded_process,
    stop_leftovers,
    wait_gone,
    write_pid_file,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"),
]

SLEEP = "import time; time.sleep(300)"


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, killed at its end whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_child_dies_with_its_parent_even_when_the_parent_is_killed(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    parent_code = (
        "import signal, subprocess, sys, time\n"
        "from adapters.processes import die_with_parent\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEP!r}],"
        " preexec_fn=die_with_parent(signal.SIGKILL))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    spawn.append(parent)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    try:
        assert not wait_gone([child], 10), "the child outlived its killed parent"
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def test_a_pid_file_names_a_process_only_while_it_is_that_process(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLEEP, "spotcheck", "run", "streams"])
    spawn.append(proc)
    path = tmp_path / "streams.pid"
    write_pid_file(path, proc.pid)
    found = recorded_process(path, is_streams)
    assert found is not None and found.pid == proc.pid
    assert recorded_process(path, is_tansu) is None, "another command line: not that process"
    started = float(path.read_text().split()[1])
    path.write_text(f"{proc.pid}\n{started - 3600:.2f}\n")
    assert recorded_process(path, is_streams) is None, "started at another time: the pid was reused"
    proc.kill()
    proc.wait()
    path.write_text(f"{proc.pid}\n{started:.2f}\n")
    assert recorded_process(path, is_streams) is None, "gone"


def test_leftovers_are_stopped_and_a_reused_pid_is_left_alone(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    state = tmp_path / "state"
    leftover = subprocess.Popen(
        [sys.executable, "-c", SLEEP, "spotcheck", "run", "streams"], start_new_session=True
    )
    bystander = subprocess.Popen([sys.executable, "-c", SLEEP])
    spawn += [leftover, bystander]
    write_pid_file(state / "run" / "streams.pid", leftover.pid)
    write_pid_file(state / "run" / "broker.pid", bystander.pid)  # its pid went to another program

    assert stop_leftovers(state) == [f"stream processor (pid {leftover.pid})"]
    assert leftover.poll() is not None, "the leftover still runs"
    assert bystander.poll() is None, "an unrelated process was stopped"
    assert not (state / "run" / "streams.pid").exists() and not (state / "run" / "broker.pid").exists()
    assert stop_leftovers(state) == []


def test_one_up_per_state_folder(tmp_path: Path) -> None:
    first, second = UpLock(tmp_path), UpLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning, match=f"already running .* \\(pid {os.getpid()}\\)"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


def test_a_stop_says_what_is_still_running_and_keeps_its_pid_file(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLEEP, "spotcheck", "run", "streams"])
    spawn.append(proc)
    owned = Owned(tmp_path)
    owned.started("stream processor", proc.pid, "streams.pid")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        owned.listens("HTTP API", "127.0.0.1", port)
        left = owned.still_running(timeout=0.5)
        assert left[0] == f"stream processor (pid {proc.pid})"
        assert left[1].startswith(f"port 127.0.0.1:{port} of the HTTP API, held by pid {os.getpid()}")
        assert (tmp_path / "run" / "streams.pid").exists(), "the next `up` needs it"
    proc.kill()
    assert owned.still_running(timeout=5) == []
    assert not (tmp_path / "run" / "streams.pid").exists()
