"""What `spotcheck up` owns: one `up` per state folder, children that die with it, a crash's leftovers."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import structlog

from spotcheck.errors import SpotcheckError

log = structlog.get_logger(__name__)

RUN_DIR = "run"  # in the state folder: up.pid (the lock), broker.pid, streams.pid
_PR_SET_PDEATHSIG = 1


class AlreadyRunning(SpotcheckError):
    """Another `spotcheck up` runs with the same state folder."""


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` after which the child gets `sig` when the thread that started it ends, however
    it ends (Linux `PR_SET_PDEATHSIG`; start the child from the main thread). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call above
            os.kill(os.getpid(), sig)

    return preexec


def alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie waiting for a parent that does not reap it."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `procs` still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        with contextlib.suppress(psutil.Error):  # reaps those that are our own children
            psutil.wait_procs(left, timeout=min(0.2, max(0.0, deadline - time.monotonic())))


def stop(proc: psutil.Process, sig: signal.Signals = signal.SIGTERM, grace: float = 10.0) -> bool:
    """Send `sig`, then SIGKILL after `grace` seconds; whether the process is gone."""
    for send, wait in ((sig, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(send)
        if not wait_gone([proc], wait):
            return True
    return False


def write_pid_file(path: Path, pid: int) -> None:
    """The pid and the process's start time, so that a pid reused by another process is told apart."""
    started = psutil.Process(pid).create_time()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n{started:.2f}\n")


def recorded_process(
    path: Path, looks_like: Callable[[list[str]], bool], *, timed: bool = True
) -> psutil.Process | None:
    """The live process a pid file names (its first line), if it still is that process: a command
    line that `looks_like` accepts and, for files of `write_pid_file` (`timed`), the same start
    time. None otherwise."""
    try:
        lines = path.read_text().split("\n")
        proc = psutil.Process(int(lines[0]))
        if timed and abs(proc.create_time() - float(lines[1])) > 1.0:
            return None
        return proc if alive(proc) and looks_like(proc.cmdline()) else None
    except (OSError, ValueError, psutil.Error):
        return None


def is_tansu(cmdline: list[str]) -> bool:
    return bool(cmdline) and "tansu" in Path(cmdline[0]).name and "broker" in cmdline


def is_streams(cmdline: list[str]) -> bool:
    return "spotcheck" in cmdline and cmdline[-2:] == ["run", "streams"]


def postmaster_of(pgdata: Path) -> Callable[[list[str]], bool]:
    def looks_like(cmdline: list[str]) -> bool:
        if not cmdline or Path(cmdline[0]).name != "postgres" or "-D" not in cmdline[:-1]:
            return False
        return Path(cmdline[cmdline.index("-D") + 1]).resolve() == pgdata.resolve()

    return looks_like


def who_listens(host: str, port: int) -> str:
    """Who holds a local TCP port, as far as this user may see: 'pid N (name)', else ''."""
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                if conn.laddr.ip in (host, "0.0.0.0", "::"):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _names_another_program(pid_file: Path, program: str) -> bool:
    """The pid file names a live process that is clearly not `program` (its pid was reused)."""
    try:
        cmdline = psutil.Process(int(pid_file.read_text().split("\n")[0])).cmdline()
    except (OSError, ValueError, psutil.Error):
        return False
    return bool(cmdline) and not Path(cmdline[0]).name.startswith(program)


def stop_leftovers(state_dir: Path) -> list[str]:
    """Stop what a run of `up` that did not stop cleanly left in `state_dir` (call it holding the
    lock, so no live `up` owns them): the stream processor, the broker, then PostgreSQL. Each pid
    is checked to still be that process first; a pid reused by something else is left alone.
    Returns what was stopped; raises if something would not stop."""
    run = state_dir / RUN_DIR
    found: list[str] = []
    for name, path, looks_like, grace in (
        ("stream processor", run / "streams.pid", is_streams, 15.0),
        ("broker", run / "broker.pid", is_tansu, 5.0),
    ):
        proc = recorded_process(path, looks_like)
        if proc is not None:
            log.warning("stopping what an earlier run left", what=name, pid=proc.pid)
            if not stop(proc, signal.SIGTERM, grace):
                raise SpotcheckError(f"the {name} an earlier run left (pid {proc.pid}) does not stop")
            found.append(f"{name} (pid {proc.pid})")
        path.unlink(missing_ok=True)  # what it named is gone, or the pid is another process's now
    pid = stop_postmaster(state_dir / "pgdata")
    if pid is not None:
        found.append(f"PostgreSQL (pid {pid})")
    return found


def stop_postmaster(pgdata: Path) -> int | None:
    """Stop (fast shutdown) a PostgreSQL server running on `pgdata`; its pid, if there was one."""
    lock_file = pgdata / "postmaster.pid"
    proc = recorded_process(lock_file, postmaster_of(pgdata), timed=False)
    if proc is None:
        if _names_another_program(lock_file, "postgres"):
            # the pid was reused; PostgreSQL would refuse to start while it is alive
            lock_file.unlink(missing_ok=True)
        return None
    log.warning("stopping the PostgreSQL an earlier run left", pid=proc.pid)
    if not stop(proc, signal.SIGINT, 30.0):
        raise SpotcheckError(f"the PostgreSQL an earlier run left (pid {proc.pid}) does not stop")
    return proc.pid


class UpLock:
    """`<state_dir>/run/up.pid`, locked (flock) by the `up` that runs there: the kernel lets go of it
    however that process ends, so a held lock always means a live `up`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / RUN_DIR / "up.pid"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").split("\n")[0].strip() or "unknown"
            os.close(fd)
            folder = self.path.parent.parent
            raise AlreadyRunning(
                f"spotcheck up is already running with the state folder {folder} (pid {holder}); "
                f"stop it first (Ctrl-C in its terminal, or kill {holder}), "
                "or give this one another SPOTCHECK_STATE_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Empty the file and let go (the file stays: removing a locked file races with a newcomer)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


@dataclass
class Owned:
    """What this run of `up` started: processes (with their pid files) and the ports they listen
    on, so that a stop can say truthfully whether anything is left."""

    state_dir: Path
    _procs: list[tuple[str, psutil.Process, Path | None]] = field(default_factory=list)
    _ports: list[tuple[str, str, int]] = field(default_factory=list)

    def started(self, what: str, pid: int, pid_file: str | None = None) -> None:
        """`what` runs as `pid`; `pid_file` (in the run folder) lets a later `up` find it after a crash."""
        path = None
        if pid_file is not None:
            path = self.state_dir / RUN_DIR / pid_file
            write_pid_file(path, pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            self._procs.append((what, psutil.Process(pid), path))

    def listens(self, what: str, host: str, port: int) -> None:
        self._ports.append((what, host, port))

    def still_running(self, timeout: float = 5.0) -> list[str]:
        """After the stop: what this run started that still runs or holds its port (given up to
        `timeout` seconds to go). The pid files of what is gone are removed; the others stay."""
        left = wait_gone([p for _, p, _ in self._procs], timeout)
        report = []
        for what, proc, path in self._procs:
            if proc in left:
                report.append(f"{what} (pid {proc.pid})")
            elif path is not None:
                path.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        for what, host, port in self._ports:
            while not port_is_free(host, port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not port_is_free(host, port):
                holder = who_listens(host, port)
                report.append(f"port {host}:{port} of the {what}" + (f", held by {holder}" if holder else ""))
        return report
