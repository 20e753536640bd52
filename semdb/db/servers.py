"""Extra PostgreSQL servers from the embedded server's binaries: a streaming replica of a
local server, or a server listening on TCP. For tests, benches and trying things locally;
production replicas are made by your PostgreSQL provider or operator.

>>> primary = semdb.EmbeddedServer(); primary.start()
>>> replica = LocalServer(Path("/tmp/replica"))
>>> replica.basebackup(primary.socket_dir)     # pg_basebackup -R: a hot standby of primary
>>> replica.start()                            # its own socket folder (and port, if TCP)
>>> engine = semdb.create_read_engine(replica.url())
>>> replica.stop()

``semdb db replica start|stop|status --home DIR`` does the same from the command line, for
the embedded server of ``SEMDB_HOME``.

A :class:`LocalServer` is one ``postgres`` process on one data folder, started directly
(no ``pg_ctl``), in a session of its own so that it outlives the process that started it,
and stopped by :meth:`LocalServer.stop` (a fast shutdown). As root, it runs as the embedded
server's system user, like the embedded server.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
from sqlalchemy.engine import URL

from semdb.db.embedded import (
    DATABASE,
    SERVER_SETTINGS,
    SUPERUSER,
    SYSTEM_USER,
    log_tail,
    prepare_data_folder,
    run_server_program,
    running_postmaster,
    server_binaries,
)
from semdb.errors import EmbeddedServerError

_MAX_SOCKET_PATH = 100


class LocalServer:
    """One PostgreSQL server in ``home`` (``home/pgdata``, log ``home/server.log``).

    ``listen``: the TCP addresses to listen on (``listen_addresses``), empty for none;
    ``port``: the TCP port, which also names the socket file; ``trust``: networks (CIDR)
    whose TCP clients are let in without a password (for tests on a private network).
    """

    def __init__(
        self,
        home: Path,
        *,
        port: int = 5432,
        listen: str = "",
        trust: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
        binaries: Path | None = None,
    ) -> None:
        self.home = Path(home).absolute()
        self.pgdata = self.home / "pgdata"
        self.port = port
        self.listen = listen
        self.trust = tuple(trust)
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.binaries = binaries
        self.log_path = self.home / "server.log"

    # -- what it is ----------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        folder = self.home / "run"
        if len(str(folder / f".s.PGSQL.{self.port}")) <= _MAX_SOCKET_PATH:
            return folder
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path("/tmp") / f"semdb-{digest}"

    def url(self, database: str = DATABASE, *, host: str | None = None) -> URL:
        """The URL of ``database``: over the socket, or over TCP to ``host``."""
        if host is not None:
            return URL.create(
                "postgresql+psycopg",
                username=SUPERUSER,
                host=host,
                port=self.port,
                database=database,
            )
        return URL.create(
            "postgresql+psycopg",
            username=SUPERUSER,
            database=database,
            query={"host": str(self.socket_dir), "port": str(self.port)},
        )

    @property
    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def pid(self) -> int | None:
        """The postmaster's pid while it accepts connections (as a primary or a standby)."""
        return running_postmaster(self.pgdata, ("ready", "standby"))

    # -- making the data folder ----------------------------------------------------------------

    def initdb(self) -> None:
        """A new, empty cluster (trust authentication, like the embedded server)."""
        self._prepare()
        self._run(
            "initdb",
            ["-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"]
            + ["--no-locale", "--text-search-config=english"],
        )

    def basebackup(self, primary_host: str | Path, primary_port: int = 5432) -> None:
        """Copy a running server (socket folder or host name) with ``pg_basebackup -R``: the
        copy starts as a hot standby streaming from it."""
        if self.initialised:
            raise EmbeddedServerError(
                f"{self.pgdata} holds a cluster already",
                fix=f"remove {self.home} to make a new replica, or start the one there",
            )
        self._prepare()
        self._run(
            "pg_basebackup",
            ["-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast"]
            + ["-h", str(primary_host), "-p", str(primary_port), "-U", SUPERUSER],
            timeout=600,
        )

    # -- running ---------------------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> URL:
        """Start the server (if not running) and wait until it accepts connections."""
        if self.pid() is not None:
            return self.url()
        if not self.initialised:
            raise EmbeddedServerError(
                f"no cluster in {self.pgdata}", fix="call initdb() or basebackup() first"
            )
        self._write_hba()
        socket_dir = self.socket_dir
        prepare_data_folder(self.pgdata, self.binaries, owned=[socket_dir])
        command = [
            str((self.binaries or server_binaries()) / "postgres"),
            "-D",
            str(self.pgdata),
            "-k",
            str(socket_dir),
            "-h",
            self.listen,
            "-p",
            str(self.port),
        ]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
                user=self._server_user(),
            )
        deadline = time.monotonic() + timeout
        while self.pid() is None:
            if process.poll() is not None:
                raise EmbeddedServerError(
                    f"the server in {self.pgdata} exited at start: {log_tail(self.log_path)}",
                    fix=f"read {self.log_path}",
                )
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the server in {self.pgdata} did not accept connections in {timeout:.0f} s",
                    fix=f"read {self.log_path}",
                )
            time.sleep(0.05)
        return self.url()

    def stop(self, *, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT); an immediate one (SIGQUIT) if it does not end in time."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, PermissionError, IndexError, ValueError):
            return
        try:
            process = psutil.Process(pid)
            process.send_signal(signal.SIGINT)
            process.wait(timeout)
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            process.send_signal(signal.SIGQUIT)
            process.wait(timeout)

    # -- mechanics -------------------------------------------------------------------------------

    def _server_user(self) -> str | None:
        return SYSTEM_USER if os.geteuid() == 0 else None

    def _prepare(self) -> None:
        prepare_data_folder(self.pgdata, self.binaries, owned=[self.home])

    def _write_hba(self) -> None:
        """Trust the networks asked for (appended once to pg_hba.conf)."""
        if not self.trust:
            return
        hba = self.pgdata / "pg_hba.conf"
        text = hba.read_text()
        lines = [f"host all all {network} trust" for network in self.trust]
        lines += [f"host replication all {network} trust" for network in self.trust]
        missing = [line for line in lines if line not in text.splitlines()]
        if missing:
            hba.write_text(text.rstrip("\n") + "\n" + "\n".join(missing) + "\n")

    def _run(self, program: str, args: Sequence[str], *, timeout: float = 120) -> None:
        run_server_program(
            self.binaries,
            program,
            args,
            timeout=timeout,
            what=str(self.pgdata),
            fix=f"remove {self.home} and try again; check that the source server runs",
        )
