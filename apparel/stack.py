"""The whole stack on one machine: `make up` / `make down` / `make status` / `make logs`.

The warehouse PostgreSQL is started first (`apparel db start`: a daemon shared with `make run`),
then supervisord (the `supervisor` package) runs every other service, and restarts one that exits
while the others keep running:

| service               | what                                        | health check                     |
| --------------------- | ------------------------------------------- | -------------------------------- |
| airflow-api           | Airflow 3 api-server (UI, REST, execution)  | /api/v2/monitor/health           |
| airflow-scheduler     | scheduler with the LocalExecutor            | (reported by the api-server)     |
| airflow-dag-processor | parses airflow/dags/                        | (reported by the api-server)     |
| airflow-triggerer     | deferred tasks                              | (reported by the api-server)     |
| superset              | gunicorn serving Superset                   | /health                          |
| dbt-docs              | `dbt docs generate`, then http.server       | /index.html                      |
| stream                | `apparel stream`: the shop's CDC stream     | its replication slot is active   |
| simulator             | `apparel simulate` (only with SIMULATE=1)   | the store got an order recently  |

Each service's command is `python -m apparel.stack run <service>`: the environment and the command
of a service are computed here (and nowhere else), so supervisord, Docker Compose and people agree.
supervisord's configuration is written from this module at each `make up`
(`STATE_DIR/stack/supervisord.conf`); a service that exits is started again at once, one that
exits within `START_SECONDS` of its start is retried `START_RETRIES` times with a growing delay
(supervisord's backoff: 1 s, 2 s, 3 s, ...), then left FATAL (`make status` shows it). Airflow's
settings come from `apparel.airflow_env.airflow_env()` plus the stack's overrides: metadata in an
`airflow` database on the warehouse server, LocalExecutor, SimpleAuthManager with the login from
`.env`, and secrets (fernet key, JWT secret, API secret) generated once into `.env` and shared by
every component.

Each service records its pid (`STATE_DIR/stack/pids/`): `status` sums the memory of each service's
process tree and asks supervisord for its state, uptime and restarts; `down` stops supervisord
(SIGTERM: it stops each service's process group, 30 s grace, then SIGKILL), then any process of
those trees still alive: Airflow's task processes start their own sessions, out of its reach. Every
process also carries `APPAREL_STACK_ID` in its environment as a second net for that sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import requests

from apparel.config import (
    PROJECT_ROOT,
    Settings,
    ensure_secrets,
    load_settings,
    redact_url,
    with_database,
)

log = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent
# Seconds supervisord waits after SIGTERM before it SIGKILLs a service (its default, 10 s, is short
# for the scheduler to let running tasks finish and mark them in the metadata database).
STOP_GRACE_SECONDS = 30
# A service that exits sooner than this after its start failed to start: supervisord retries it
# START_RETRIES times, waiting 1 s longer each time, then gives up on it (FATAL). One that ran longer
# is restarted whenever it exits.
START_SECONDS = 10
START_RETRIES = 5
AIRFLOW_DATABASE = "airflow"
STACK_ID_VAR = "APPAREL_STACK_ID"
SERVICE_VAR = "APPAREL_STACK_SERVICE"

AIRFLOW_SERVICES = ("airflow-api", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
ALL_SERVICES = (*AIRFLOW_SERVICES, "superset", "dbt-docs", "stream", "simulator")
# Runs only when SIMULATE=1 (.env or environment), at SIMULATE_RATE orders per second.
OPTIONAL_SERVICES = ("simulator",)
# How long the scheduler waits for the api-server before it starts (see _wait_for_api_server).
API_WAIT_SECONDS = 180

# Written into .env (mode 600) when set neither in the environment nor in .env. The Airflow ones use
# Airflow's own variable names, so Docker Compose hands the same `.env` to the official images as is.
AIRFLOW_SECRETS: dict[str, Callable[[], str]] = {
    "AIRFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
    # The stream's Airflow login (role op): it posts the shop mirror's asset events.
    "STREAM_AIRFLOW_PASSWORD": lambda: secrets.token_urlsafe(18),
    "AIRFLOW__CORE__FERNET_KEY": lambda: _fernet_key(),
    "AIRFLOW__API_AUTH__JWT_SECRET": lambda: secrets.token_urlsafe(32),
    "AIRFLOW__API__SECRET_KEY": lambda: secrets.token_urlsafe(32),
}


def _token() -> str:
    return secrets.token_urlsafe(18)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class StackSettings:
    """Ports, hosts and folders of the stack, from the project's settings."""

    settings: Settings

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def run_dir(self) -> Path:
        """supervisord's configuration, socket, pid file and log, the services' logs, the stack's
        record of what runs."""
        return self.state_dir / "stack"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def supervisor_conf(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisord.sock"

    @property
    def logs_dir(self) -> Path:
        """One log per service (`make logs` follows them all)."""
        return self.run_dir / "logs"

    @property
    def record_file(self) -> Path:
        return self.run_dir / "stack.json"

    @property
    def log_file(self) -> Path:
        """supervisord's own log: services started, exited, restarted."""
        return self.run_dir / "supervisord.log"

    @property
    def airflow_host(self) -> str:
        return self.settings.get("AIRFLOW_HOST", "127.0.0.1")

    @property
    def airflow_port(self) -> int:
        return int(self.settings.get("AIRFLOW_PORT", "8080"))

    @property
    def airflow_url(self) -> str:
        return f"http://{_client_host(self.airflow_host)}:{self.airflow_port}"

    @property
    def admin_user(self) -> str:
        return self.settings.get("AIRFLOW_ADMIN_USER", "admin")

    @property
    def stream_user(self) -> str:
        from apparel.airflow_notify import STREAM_AIRFLOW_USER

        return self.settings.get("STREAM_AIRFLOW_USER", STREAM_AIRFLOW_USER)

    @property
    def admin_password(self) -> str:
        return self.settings.get("AIRFLOW_ADMIN_PASSWORD")

    @property
    def docs_host(self) -> str:
        return self.settings.get("DBT_DOCS_HOST", "127.0.0.1")

    @property
    def docs_port(self) -> int:
        return int(self.settings.get("DBT_DOCS_PORT", "8081"))

    @property
    def docs_url(self) -> str:
        return f"http://{_client_host(self.docs_host)}:{self.docs_port}"

    @property
    def docs_target(self) -> Path:
        """The docs site's own dbt target folder: `docs generate` must not rewrite the manifest
        Cosmos reads (STATE_DIR/dbt/target) while the dag-processor parses it."""
        return self.state_dir / "dbt" / "docs"

    @property
    def airflow_metadata_url(self) -> str:
        """SQLAlchemy URL of Airflow's metadata: the `airflow` database on the warehouse server."""
        if url := self.settings.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            return url
        if self.settings.embedded:
            from apparel.roles import AIRFLOW

            url = self.settings.embedded_url(AIRFLOW_DATABASE, AIRFLOW)
        else:
            url = with_database(self.settings.warehouse_url, AIRFLOW_DATABASE)
        return url.replace("postgresql://", "postgresql+psycopg://", 1)

    def superset(self):
        from apparel.superset_setup import superset_settings

        return superset_settings(self.settings, require_secrets=False)


def warn_if_exposed(name: str, host: str) -> None:
    """A web UI bound to a non-loopback address sends its logins in clear text over the network."""
    if not _is_loopback(host):
        print(
            f"warning: {name} listens on {host}, reachable from other machines over plain HTTP: "
            "put a TLS-terminating proxy in front of it (or bind it to 127.0.0.1)",
            file=sys.stderr,
        )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def stack_settings() -> StackSettings:
    return StackSettings(load_settings())


# ---------------------------------------------------------------------------------------- environments


def airflow_stack_env(st: StackSettings) -> dict[str, str]:
    """Airflow's environment under `make up`: `airflow_env()` plus what a multi-process Airflow needs.

    Anything set explicitly (environment or `.env`) wins over the stack's defaults.
    """
    from apparel.airflow_env import airflow_env

    settings = st.settings
    env = airflow_env(settings)
    # .env's Airflow settings (connections, variables, secrets, overrides): `airflow_env()` only sees
    # the process environment, and make does not export .env.
    for key, value in settings.values.items():
        if key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")) and value:
            env[key] = value
    home = Path(env["AIRFLOW_HOME"])
    stack_defaults = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": st.airflow_metadata_url,
        # psycopg 3 for the async engine too (Airflow would pick asyncpg, which is not installed).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": st.airflow_metadata_url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # The scheduler's task processes reach the api-server's execution API here.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{st.airflow_url}/execution/",
        "AIRFLOW__API__HOST": st.airflow_host,
        "AIRFLOW__API__PORT": str(st.airflow_port),
        "AIRFLOW__API__BASE_URL": st.airflow_url,
        # One uvicorn worker: this is a one-team UI; each more costs ~250 MB.
        "AIRFLOW__API__WORKERS": "1",
        # The DAGs run on their schedules as soon as they are parsed: nothing to click.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "60",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        # The stream's user may post asset events (op: the least role of the simple auth manager that may).
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{st.admin_user}:admin,{st.stream_user}:op",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_manager_passwords.json"),
        # The warehouse as an Airflow connection, for people's own DAGs and ad hoc queries.
        "AIRFLOW_CONN_WAREHOUSE": settings.warehouse_url.replace("postgresql://", "postgres://", 1),
    }
    for key, value in stack_defaults.items():
        env[key] = settings.get(key) or value
    # The project's settings as the DAGs' tasks see them (they call load_settings() themselves).
    for key in ("STATE_DIR", "PG_PORT", "WAREHOUSE_URL", "DATASET_DIR"):
        if key in settings.values:
            env[key] = settings.values[key]
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_airflow_passwords(st: StackSettings, env: dict[str, str]) -> Path:
    """SimpleAuthManager's users file, from AIRFLOW_ADMIN_USER / AIRFLOW_ADMIN_PASSWORD (rewritten at
    each start, so a password changed in .env applies at the next `make up`)."""
    if not st.admin_password:
        raise RuntimeError("AIRFLOW_ADMIN_PASSWORD is not set: run `make up` (it writes it into .env)")
    path = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    users = {st.admin_user: st.admin_password}
    if password := st.settings.get("STREAM_AIRFLOW_PASSWORD"):
        users[st.stream_user] = password
    path.write_text(json.dumps(users) + "\n")
    return path


def dbt_docs_env(st: StackSettings) -> dict[str, str]:
    from apparel.dbt_runner import dbt_env

    return {
        **os.environ,
        **dbt_env(st.settings),
        "DBT_TARGET_PATH": str(st.docs_target),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


# ----------------------------------------------------------------------------------------- services


def _exec(argv: list[str], env: dict[str, str], service: str, cwd: Path | None = None) -> None:
    """Replace this process by the service (same pid, recorded for `service_tree`)."""
    env = {**env, SERVICE_VAR: service}
    # exec keeps the pid: this file names the service's process tree for `status` and `down`
    # (Airflow and gunicorn retitle their processes, which hides their environment from /proc).
    pid_file = service_pid_file(stack_settings(), service)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    if cwd:
        os.chdir(cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def _end_leftovers(pid_file: Path) -> None:
    """Before a service starts again: end what its previous run left. A service killed with SIGKILL
    leaves its children running (a uvicorn or gunicorn worker, the scheduler's log server), which
    may hold its port. supervisord makes each service the leader of its own process group, so the
    old pid names that group; the group is the old run's when its leader is gone (a group id is not
    given to a new process while any member of the group lives)."""
    try:
        old = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    if old == os.getpid() or psutil.pid_exists(old):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(old, signal.SIGKILL)
        log.warning("ended what the previous run of this service left (process group %d)", old)


def run_service(name: str) -> None:
    """A service's command (`service_command`): prepare the service when it needs it, then exec it in
    the foreground (supervisord or Docker Compose supervises it)."""
    st = stack_settings()
    _end_leftovers(service_pid_file(st, name))
    if name in AIRFLOW_SERVICES:
        from apparel.airflow_env import AIRFLOW

        env = airflow_stack_env(st)
        component = name.removeprefix("airflow-")
        if component == "api":
            write_airflow_passwords(st, env)
        if component == "scheduler":
            _wait_for_api_server(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        argv = [str(AIRFLOW), "api-server" if component == "api" else component]
        if component == "api":
            argv += ["--host", st.airflow_host, "--port", str(st.airflow_port)]
        _exec(argv, env, name)
    elif name == "dbt-docs":
        from apparel.dbt_runner import DBT_PROJECT_DIR

        env = dbt_docs_env(st)
        dbt = str(VENV_BIN / "dbt")
        target = ["--target-path", str(st.docs_target)]
        subprocess.run(
            [dbt, "docs", "generate", "--quiet", *target], cwd=DBT_PROJECT_DIR, env=env, check=True
        )
        # The site is static files: Python's http.server serves them. `dbt docs serve` binds without
        # SO_REUSEADDR, so after a SIGKILL it could not bind its port again until the connections the
        # health checks left in TIME_WAIT expired, about a minute (supervisord retried it five times).
        argv = [str(VENV_BIN / "python"), "-m", "http.server", str(st.docs_port), "--bind", st.docs_host]
        _exec([*argv, "--directory", str(st.docs_target)], env, name)
    elif name == "superset":
        _run_superset(st)
    elif name == "stream":
        # Always on: mirrors the shop's database into raw_store (settings: STORE_URL, STREAM_*).
        env = _service_env()
        # It tells this stack's Airflow when raw_store changed (fresh_marts runs on that asset event).
        env.setdefault("STREAM_AIRFLOW_URL", st.settings.get("STREAM_AIRFLOW_URL") or st.airflow_url)
        _exec([str(VENV_BIN / "apparel"), "stream"], env, name)
    elif name == "simulator":
        rate = st.settings.get("SIMULATE_RATE", "5")
        argv = [str(VENV_BIN / "apparel"), "simulate", "--rate", rate, "--duration", "0"]
        _exec(argv, _service_env(), name)
    else:
        raise SystemExit(f"unknown service {name!r}; one of {', '.join(ALL_SERVICES)}")


def _wait_for_api_server(execution_api_url: str, timeout: float = API_WAIT_SECONDS) -> None:
    """Until the api-server whose execution API the scheduler's tasks report to answers, or `timeout`:
    a task started before it listens fails (the first `load_*` tasks of a `make up` did). After the
    timeout the scheduler starts anyway: an api-server that never comes is its own service's failure."""
    base = execution_api_url.rstrip("/").removesuffix("/execution")
    deadline = time.monotonic() + timeout
    while not http_ok(f"{base}/api/v2/monitor/health")[0]:
        if time.monotonic() > deadline:
            log.warning("the api-server did not answer in %.0f s; starting the scheduler anyway", timeout)
            return
        time.sleep(1)


def _service_env() -> dict[str, str]:
    """The stream's and the simulator's environment: they read the project's settings themselves."""
    path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}


def _run_superset(st: StackSettings) -> None:
    """Prepare Superset as `make superset` does, then run gunicorn in the foreground (supervised)."""
    from apparel import superset_setup as sup

    settings = st.settings
    ss = sup.superset_settings(settings)
    if not (sup.SUPERSET_VENV / "bin" / "gunicorn").exists():
        raise SystemExit("the Superset environment is missing: run `make superset-venv`")
    sup.prepare_reader(settings, ss)
    if ss.metadata_url and not settings.embedded:
        # With SUPERSET_DATABASE_URL set (Compose): creates the database only when it is missing.
        sup.ensure_metadata_database(ss.metadata_url)
    sup.bootstrap(ss)
    ss.run_dir.mkdir(parents=True, exist_ok=True)
    # The same gunicorn command line as `make superset`, in the foreground.
    _exec(sup.gunicorn_argv(ss), ss.env(), "superset", cwd=ss.run_dir)


# ----------------------------------------------------------------------------------------- health


def airflow_health(st: StackSettings) -> tuple[bool, str]:
    """The api-server answers and reports the metadata database, scheduler, dag-processor and
    triggerer healthy (each component heartbeats into the metadata database)."""
    try:
        body = requests.get(f"{st.airflow_url}/api/v2/monitor/health", timeout=3).json()
    except (requests.RequestException, ValueError) as e:
        return False, type(e).__name__
    parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    bad = [p for p in parts if (body.get(p) or {}).get("status") != "healthy"]
    return not bad, "healthy" if not bad else f"waiting for {', '.join(bad)}"


def stream_health(st: StackSettings) -> tuple[bool, str]:
    """The stream holds its replication slot (a walsender serves it) and `apparel stream status`
    has no warning (slot present, WAL held back under STREAM_WAL_WARN_MB)."""
    from apparel import stream

    try:
        status = stream.configured_status(st.settings)
    except Exception as e:  # any failure to ask is "not healthy (yet)", with its reason
        return False, f"{type(e).__name__}: {str(e).strip()[:120]}"
    if status.warnings:
        return False, status.warnings[0]
    if not status.slot_active:
        return False, f"slot {status.slot} is not active"
    age = f", last batch {status.last_batch_age_s:.0f} s ago" if status.last_batch_age_s is not None else ""
    return True, f"slot active, {status.changes_per_s:,.0f} changes/s{age}"


def simulator_health(st: StackSettings) -> tuple[bool, str]:
    """The store got an order within the last few expected inter-arrival times (at least 10 s)."""
    import psycopg

    rate = float(st.settings.get("SIMULATE_RATE", "5"))
    window = max(10.0, 20 / rate) if rate > 0 else float("inf")
    try:
        with psycopg.connect(st.settings.store_url, connect_timeout=3) as conn:
            newest = "select extract(epoch from now() - max(created_at)) from shop_order"
            age = conn.execute(newest).fetchone()[0]
    except psycopg.Error as e:
        return False, f"{type(e).__name__}: {str(e).strip()[:120]}"
    if age is None or float(age) > window:
        return False, "no order in the store for " + ("ever" if age is None else f"{float(age):.0f} s")
    return True, f"last order {float(age):.1f} s ago"


def http_ok(url: str) -> tuple[bool, str]:
    try:
        code = requests.get(url, timeout=3).status_code
    except requests.RequestException as e:
        return False, type(e).__name__
    return code == 200, f"HTTP {code}"


def service_checks(st: StackSettings, services: list[str]) -> dict[str, Callable[[], tuple[bool, str]]]:
    """One check per endpoint: the Airflow components share the api-server's health report."""
    checks: dict[str, Callable[[], tuple[bool, str]]] = {}
    if any(s in AIRFLOW_SERVICES for s in services):
        checks["airflow"] = lambda: airflow_health(st)
    if "superset" in services:
        checks["superset"] = lambda: http_ok(f"{st.superset().base_url}/health")
    if "dbt-docs" in services:
        checks["dbt-docs"] = lambda: http_ok(f"{st.docs_url}/index.html")
    if "stream" in services:
        checks["stream"] = lambda: stream_health(st)
    if "simulator" in services:
        checks["simulator"] = lambda: simulator_health(st)
    return checks


# ------------------------------------------------------------------------------------------ processes


def supervisor_pid(st: StackSettings) -> int | None:
    """supervisord's pid when the stack runs; a stale pid file is removed."""
    try:
        pid = int(st.pid_file.read_text().strip())
        proc = psutil.Process(pid)
        if "supervisord" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
            return pid
    except (FileNotFoundError, ValueError, psutil.Error):
        pass
    st.pid_file.unlink(missing_ok=True)
    return None


def service_command(name: str) -> list[str]:
    """The command of a service, as supervisord and Docker Compose run it (`python` of the venv)."""
    return ["python", "-m", "apparel.stack", "run", name]


def _ini(value: object) -> str:
    """A value for supervisord's configuration: it expands %(name)s in some options and not in others,
    and a line break would start another option, so neither may reach it (paths come from settings)."""
    text = str(value)
    if "%" in text or "\n" in text or "\r" in text:
        raise ValueError(f"{text!r}: supervisord cannot take a % or a line break here; change STATE_DIR")
    return text


def write_supervisor_config(st: StackSettings, services: list[str]) -> Path:
    """supervisord's configuration for these services (rewritten at each start: edit this code)."""
    run = st.run_dir
    sections = {
        "supervisord": {
            "nodaemon": "true",  # `make up` starts it in its own session and records its pid
            "silent": "true",
            "logfile": st.log_file,
            "pidfile": st.pid_file,
            "childlogdir": st.logs_dir,
            "directory": PROJECT_ROOT,
        },
        # The control socket, for `make status` and supervisorctl; only its owner may use it.
        "unix_http_server": {"file": st.supervisor_socket, "chmod": "0700"},
        "rpcinterface:supervisor": {
            "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
        },
        "supervisorctl": {"serverurl": f"unix://{st.supervisor_socket}"},
    }
    for name in services:
        sections[f"program:{name}"] = {
            "command": " ".join([str(VENV_BIN / "python"), *service_command(name)[1:]]),
            "autorestart": "true",
            "startsecs": START_SECONDS,
            "startretries": START_RETRIES,
            "stopsignal": "TERM",
            "stopwaitsecs": STOP_GRACE_SECONDS,
            # Signals go to the service's whole process group (gunicorn's workers, dbt, ...).
            "stopasgroup": "true",
            "killasgroup": "true",
            "redirect_stderr": "true",
            "stdout_logfile": st.logs_dir / f"{name}.log",
            "stdout_logfile_maxbytes": "50MB",
            "stdout_logfile_backups": "2",
        }
    lines = ["; Written by apparel/stack.py at each `make up`: change the code, not this file."]
    for section, options in sections.items():
        lines += ["", f"[{section}]", *(f"{key} = {_ini(value)}" for key, value in options.items())]
    run.mkdir(parents=True, exist_ok=True)
    st.logs_dir.mkdir(parents=True, exist_ok=True)
    st.supervisor_conf.write_text("\n".join(lines) + "\n")
    return st.supervisor_conf


def start_supervisor(st: StackSettings, services: list[str], env: dict[str, str]) -> subprocess.Popen:
    """supervisord in its own session, running `services`; its pid is the stack's."""
    conf = write_supervisor_config(st, services)
    # Restarts are counted from this log (`spawned:` lines): a new one for each start.
    if st.log_file.exists():
        st.log_file.replace(st.log_file.with_suffix(".log.1"))
    with st.log_file.open("a") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "supervisord"), "-c", str(conf)],
            env=env,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    st.pid_file.write_text(f"{proc.pid}\n")
    return proc


def supervisor_rpc(st: StackSettings):
    """supervisord's XML-RPC interface over its unix socket (what supervisorctl uses)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{st.supervisor_socket}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def process_info(st: StackSettings) -> dict[str, dict]:
    """supervisord's view of each service: state, pid, uptime (s), restarts since `make up`."""
    try:
        infos = supervisor_rpc(st).getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return {}
    log = st.log_file.read_text(errors="replace") if st.log_file.exists() else ""
    result = {}
    for info in infos:
        name = info["name"]
        spawned = log.count(f"spawned: '{name}' with pid")
        result[name] = {
            "state": info["statename"],
            "pid": info["pid"],
            "uptime_s": info["now"] - info["start"] if info["statename"] == "RUNNING" else 0,
            "restarts": max(spawned - 1, 0),
        }
    return result


def service_pid_file(st: StackSettings, service: str) -> Path:
    return st.run_dir / "pids" / f"{service}.pid"


def service_tree(st: StackSettings, service: str) -> list[psutil.Process]:
    """The service's process and all its descendants (task processes, workers, dbt), when it runs."""
    pid_file = service_pid_file(st, service)
    try:
        proc = psutil.Process(int(pid_file.read_text().strip()))
        # The service wrote the file after it started; a later process with a recycled pid is not it.
        if proc.create_time() > pid_file.stat().st_mtime + 1:
            return []
        return [proc, *proc.children(recursive=True)]
    except (FileNotFoundError, ValueError, psutil.Error):
        return []


def read_record(st: StackSettings) -> dict:
    try:
        return json.loads(st.record_file.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def stack_processes(stack_id: str) -> list[psutil.Process]:
    """Every process whose environment carries this stack's id (services, their workers and tasks)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get(STACK_ID_VAR) == stack_id:
                found.append(proc)
    return found


def service_rss(st: StackSettings, services: list[str]) -> dict[str, tuple[int, int]]:
    """(process count, resident bytes) per service, summed over each service's process tree."""
    result = {}
    for name in services:
        count = total = 0
        for proc in service_tree(st, name):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
                count += 1
        result[name] = (count, total)
    return result


def warehouse_rss(st: StackSettings) -> int:
    """RSS of the embedded PostgreSQL (postmaster and its backends), 0 when not embedded or stopped."""
    pid_file = st.state_dir / "pgdata" / "postmaster.pid"
    try:
        parent = psutil.Process(int(pid_file.read_text().split()[0]))
        procs = [parent, *parent.children(recursive=True)]
    except (FileNotFoundError, ValueError, IndexError, psutil.Error):
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((_client_host(host), port)) == 0


# ------------------------------------------------------------------------------------------ lifecycle


def _start_warehouse(settings: Settings) -> None:
    from apparel.embedded_pg import wait_until_ready
    from apparel.roles import start_embedded

    if settings.embedded:
        start_embedded(settings)  # with its roles and databases (Airflow's and Superset's too)
    else:
        wait_until_ready(settings.warehouse_url, timeout=10)


def _ensure_airflow_database(st: StackSettings) -> None:
    """Create the `airflow` database on a PostgreSQL server when it is missing (external warehouse)."""
    import psycopg
    from psycopg import sql

    url = st.airflow_metadata_url
    if not url.startswith("postgres") or st.settings.embedded:
        return  # SQLite, or the embedded server's, made by `apparel db start` (apparel.roles)
    libpq = url.split("+", 1)[0] + "://" + url.split("://", 1)[1]
    name = libpq.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(with_database(libpq, "postgres"), autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def _ensure_manifest(st: StackSettings) -> None:
    """The manifest and `dbt ls` files Cosmos renders the dbt DAGs from (`make manifest` makes them
    first under make)."""
    from apparel.dbt_runner import DBT_PROJECT_DIR, manifest_path, write_render_files

    manifest = manifest_path()
    sources = [p for p in DBT_PROJECT_DIR.rglob("*") if p.suffix in (".sql", ".yml", ".md")]
    sources = [p for p in sources if not {"target", "logs"} & set(p.relative_to(DBT_PROJECT_DIR).parts)]
    inputs = [*sources, PROJECT_ROOT / "apparel" / "sources.py", PROJECT_ROOT / "apparel" / "dbt_runner.py"]
    newest = max((p.stat().st_mtime for p in inputs), default=0)
    if not manifest.exists() or manifest.stat().st_mtime < newest:
        log.info("dbt parse and ls (what the dbt DAGs are rendered from)")
        write_render_files()


def _logged(cmd: list[str], env: dict[str, str], log_path: Path, what: str) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        raise RuntimeError(f"{what} failed (see {log_path}):\n{tail}")


def generate_secrets(*, superset: bool = True, docker: bool = False) -> list[str]:
    """The stack's secrets into `.env` where missing (Superset's through its own module)."""
    from apparel.roles import PASSWORD_SETTINGS, SUPERUSER_PASSWORD

    # The database roles' passwords first: every service's URL is built from them.
    generators = {name: _token for name in (SUPERUSER_PASSWORD, *PASSWORD_SETTINGS.values())}
    generators.update(AIRFLOW_SECRETS)
    if docker:
        generators["POSTGRES_PASSWORD"] = lambda: secrets.token_urlsafe(18)
    written = ensure_secrets(generators)
    if superset:
        from apparel.superset_setup import ensure_env_secrets

        written += ensure_env_secrets()
    if written:
        print(f"generated {', '.join(written)} into .env")
    return written


def default_services(st: StackSettings) -> list[str]:
    """Every service, the simulator only with SIMULATE=1."""
    simulate = st.settings.get("SIMULATE", "0") == "1"
    return [s for s in ALL_SERVICES if simulate or s not in OPTIONAL_SERVICES]


def _ensure_store(st: StackSettings) -> None:
    """The shop's database, created and seeded from the dataset when empty (`apparel store init`),
    before the stream starts: its first start copies the store's tables into raw_store."""
    from urllib.parse import urlparse

    from apparel.store import ensure_store

    settings = st.settings
    store, warehouse = urlparse(settings.store_url), urlparse(settings.warehouse_url)
    # Its database is created on the warehouse's server (the stack manages it, as Airflow's);
    # a STORE_URL elsewhere is someone else's server: tables only.
    same_server = (store.hostname, store.port) == (warehouse.hostname, warehouse.port)
    same_server &= not settings.embedded  # the embedded one is made by `apparel db start`
    seeded = ensure_store(settings.store_url, settings.dataset_dir, create_database=same_server)
    log.info("store ready (%s)", f"{seeded:,} rows seeded" if seeded else "it already had data")


def prepare(st: StackSettings) -> None:
    """What the services need before they start, on a running warehouse (idempotent): Airflow's
    database and migrations, its users file, its dbt pool, the dbt manifest, the shop's database.
    `make up` and Compose's init run it."""
    _ensure_airflow_database(st)
    _ensure_manifest(st)
    _ensure_store(st)
    env = airflow_stack_env(st)
    write_airflow_passwords(st, env)
    from apparel.airflow_env import AIRFLOW
    from apparel.transform import DBT_POOL, DBT_POOL_SLOTS

    step = time.monotonic()
    log_path = st.run_dir / "logs" / "airflow-db-migrate.log"
    _logged([str(AIRFLOW), "db", "migrate"], env, log_path, "airflow db migrate")
    log.info("Airflow metadata migrated in %.1f s", time.monotonic() - step)
    # The pool that keeps `transform` and `fresh_marts` from building the same models at once
    # (apparel.transform); the scheduler does not run tasks of a pool that does not exist.
    description = "dbt builds: each DAG's one dbt build (Cosmos' watcher producer) takes all slots"
    pool = [str(AIRFLOW), "pools", "set", DBT_POOL, str(DBT_POOL_SLOTS), description]
    _logged(pool, env, st.run_dir / "logs" / "airflow-pools.log", "airflow pools set")


def check(service: str) -> int:
    """One service's health check, as an exit code (Compose's healthcheck runs this)."""
    st = stack_settings()
    if service in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        from apparel.airflow_env import AIRFLOW

        job = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob", "triggerer": "TriggererJob"}
        argv = [str(AIRFLOW), "jobs", "check", "--local", "--job-type"]
        argv.append(job[service.removeprefix("airflow-")])
        return subprocess.run(argv, env=airflow_stack_env(st), stdout=subprocess.DEVNULL).returncode
    if service == "airflow-api":
        ok, detail = http_ok(f"{st.airflow_url}/api/v2/monitor/health")
    elif service == "superset":
        ok, detail = http_ok(f"{st.superset().base_url}/health")
    elif service == "stream":
        ok, detail = stream_health(st)
    elif service == "simulator":
        ok, detail = simulator_health(st)
    else:
        ok, detail = http_ok(f"{st.docs_url}/index.html")
    print(f"{service}: {detail}")
    return 0 if ok else 1


def up(services: list[str] | None = None, timeout: float = 300) -> int:
    """Start the stack and return once every service answers its health check."""
    began = time.monotonic()
    st = stack_settings()
    if pid := supervisor_pid(st):
        print(f"the stack is already running (supervisord pid {pid}); nothing changed. `make down` stops it.")
        status()
        return 0
    services = list(services or default_services(st))
    generate_secrets(superset="superset" in services)
    st = stack_settings()
    taken = [
        f"{port} ({name})"
        for name, host, port in _ports(st, services)
        if _port_in_use(host, port)  # before anything starts: fail fast with the setting to change
    ]
    if taken:
        raise RuntimeError(f"port(s) {', '.join(taken)} taken by another program: change them in .env")
    for name, host, _ in _ports(st, services):
        warn_if_exposed(name, host)

    _start_warehouse(st.settings)
    prepare(st)

    stack_id = uuid.uuid4().hex
    supervisor_env = {
        **os.environ,
        **{k: v for k, v in st.settings.values.items() if k in ("STATE_DIR", "PG_PORT", "WAREHOUSE_URL")},
        STACK_ID_VAR: stack_id,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    proc = start_supervisor(st, services, supervisor_env)
    record = {
        "stack_id": stack_id,
        "supervisor_pid": proc.pid,
        "services": services,
        "started_at": datetime.now(UTC).isoformat(),
    }
    st.record_file.write_text(json.dumps(record, indent=2) + "\n")

    checks = service_checks(st, services)
    pending = dict(checks)
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while pending:
        if proc.poll() is not None:
            tail = "\n".join(st.log_file.read_text().splitlines()[-30:])
            down()
            raise RuntimeError(f"supervisord exited during start-up (see {st.log_file}):\n{tail}")
        # A service that keeps failing to start (supervisord gave up on it) will not become healthy.
        failed = [name for name, info in process_info(st).items() if info["state"] == "FATAL"]
        if failed:
            service_log = st.logs_dir / f"{failed[0]}.log"
            tail = "\n".join(service_log.read_text(errors="replace").splitlines()[-30:])
            down()
            raise RuntimeError(
                f"{failed[0]} failed to start {START_RETRIES + 1} times (see {service_log}):\n{tail}"
            )
        for name, check in list(pending.items()):
            ok, detail = check()
            last[name] = detail
            if ok:
                log.info("%s healthy after %.0f s", name, time.monotonic() - began)
                del pending[name]
        if time.monotonic() > deadline:
            down()
            raise TimeoutError(
                f"not healthy after {timeout:.0f} s: "
                + ", ".join(f"{n} ({last.get(n, '?')})" for n in pending)
                + f"; see {st.log_file}"
            )
        time.sleep(1)

    if "superset" in services:
        from apparel.superset_setup import SupersetClient, import_assets

        ss = st.superset()
        count = import_assets(SupersetClient(ss.base_url, ss.admin_user, ss.admin_password), ss)
        log.info("imported %s Superset asset files", count)
    record["healthy_after_s"] = round(time.monotonic() - began, 1)
    st.record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"stack up in {record['healthy_after_s']:.0f} s")
    print_urls(st, services)
    return 0


def _ports(st: StackSettings, services: list[str]) -> list[tuple[str, str, int]]:
    ports = []
    if "airflow-api" in services:
        ports.append(("airflow-api", st.airflow_host, st.airflow_port))
    if "superset" in services:
        ss = st.superset()
        ports.append(("superset", ss.host, ss.port))
    if "dbt-docs" in services:
        ports.append(("dbt-docs", st.docs_host, st.docs_port))
    return ports


def print_urls(st: StackSettings, services: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="the stack")
    for column in ("service", "URL", "login"):
        table.add_column(column)
    if any(s in AIRFLOW_SERVICES for s in services):
        table.add_row("Airflow", f"{st.airflow_url}/", f"{st.admin_user} / AIRFLOW_ADMIN_PASSWORD in .env")
    if "superset" in services:
        ss = st.superset()
        table.add_row(
            "Superset",
            f"{ss.base_url}/superset/dashboard/sales/",
            f"{ss.admin_user} / SUPERSET_ADMIN_PASSWORD in .env",
        )
        table.add_row("Superset (live)", f"{ss.base_url}/superset/dashboard/live-orders/", "the same")
        table.add_row(
            "Superset (customers)", f"{ss.base_url}/superset/dashboard/customers-markets/", "the same"
        )
    if "dbt-docs" in services:
        table.add_row("dbt docs", f"{st.docs_url}/", "")
    table.add_row("warehouse", redact_url(st.settings.warehouse_url), "APPAREL_ETL_PASSWORD in .env")
    if "stream" in services:
        store = redact_url(st.settings.store_url)
        table.add_row("shop store (CDC stream)", store, "`apparel stream status`")
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    print("passwords are in .env (never printed); `make status`, `make logs`, `make down`")


def down(timeout: float = 60) -> int:
    """Stop supervisord (it stops its services' process groups), then anything of the stack still alive."""
    st = stack_settings()
    record = read_record(st)
    pid = supervisor_pid(st)
    if pid is None and not record:
        print("the stack is not running")
        return 0
    # Everything the stack runs, taken before stopping it: Airflow's task processes start their own
    # sessions, so supervisord's SIGTERM to each service's process group does not reach them.
    tree: list[psutil.Process] = []
    if pid:
        with contextlib.suppress(psutil.Error):
            tree = psutil.Process(pid).children(recursive=True)
    for name in record.get("services", ALL_SERVICES):
        tree += service_tree(st, name)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout)
    leftovers = {p.pid: p for p in tree if _alive(p)}
    if record.get("stack_id"):
        leftovers.update({p.pid: p for p in stack_processes(record["stack_id"])})
    leftovers = list(leftovers.values())
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    st.pid_file.unlink(missing_ok=True)
    st.record_file.unlink(missing_ok=True)
    for name in ALL_SERVICES:
        service_pid_file(st, name).unlink(missing_ok=True)
    extra = f" ({len(leftovers)} stray process(es) stopped)" if leftovers else ""
    print(f"stack stopped{extra}")
    return 0


def status() -> int:
    """Each service: supervisord's state, uptime and restarts, processes, memory, health. Exit 3 when
    the stack is not (fully) up."""
    from rich.console import Console
    from rich.table import Table

    st = stack_settings()
    record = read_record(st)
    pid = supervisor_pid(st)
    console = Console(width=None if sys.stdout.isatty() else 160)
    if pid is None:
        console.print("the stack is not running (`make up` starts it)")
        return 3
    services = record.get("services", list(ALL_SERVICES))
    rss = service_rss(st, services)
    supervised = process_info(st)
    health = {name: check() for name, check in service_checks(st, services).items()}
    table = Table(title=f"the stack (supervisord pid {pid}, since {record.get('started_at', '?')})")
    for column, justify in (
        ("service", "left"),
        ("state", "left"),
        ("uptime", "right"),
        ("restarts", "right"),
        ("processes", "right"),
        ("RSS MB", "right"),
        ("health", "left"),
    ):
        table.add_column(column, justify=justify)
    all_ok = True
    wh = warehouse_rss(st)
    table.add_row(
        "warehouse", "", "", "", "", f"{wh / 2**20:.0f}" if wh else "", redact_url(st.settings.warehouse_url)
    )
    supervisor_mb = 0.0
    with contextlib.suppress(psutil.Error):
        supervisor_mb = psutil.Process(pid).memory_info().rss / 2**20
    table.add_row("supervisord", "RUNNING", "", "", "1", f"{supervisor_mb:.0f}", "")
    for name in services:
        key = "airflow" if name in AIRFLOW_SERVICES else name
        ok, detail = health.get(key, (False, "?"))
        count, total = rss[name]
        info = supervised.get(name, {"state": "?", "uptime_s": 0, "restarts": 0})
        running = info["state"] == "RUNNING" and count > 0
        all_ok &= ok and running
        table.add_row(
            name,
            ("[green]" if running else "[red]") + info["state"],
            _duration(info["uptime_s"]) if running else "",
            str(info["restarts"]),
            str(count),
            f"{total / 2**20:.0f}",
            ("[green]" if ok and running else "[red]") + (detail if count else "not running"),
        )
    total = sum(t for _, t in rss.values()) + wh + supervisor_mb * 2**20
    table.add_row("total", "", "", "", "", f"{total / 2**20:.0f}", "")
    console.print(table)
    return 0 if all_ok else 3


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def logs(lines: int = 50) -> int:
    """Follow supervisord's log and every service's (tail prints each file's name before its lines)."""
    st = stack_settings()
    if not st.log_file.exists():
        print("no stack log yet (`make up` writes it)")
        return 1
    services = [st.logs_dir / f"{name}.log" for name in read_record(st).get("services", ALL_SERVICES)]
    files = [str(st.log_file), *(str(p) for p in services if p.exists())]
    os.execvp("tail", ["tail", "-n", str(lines), "-F", *files])
    return 0


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `stack` sub-commands; shared by `python -m apparel.stack` and `apparel stack`."""
    sub = parser.add_subparsers(dest="stack_command", required=True)
    p = sub.add_parser("up", help="start every service; returns when all answer their health checks")
    p.add_argument("--no-superset", action="store_true", help="leave Superset out")
    p.add_argument("--no-docs", action="store_true", help="leave the dbt docs site out")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for health (default 300)")
    sub.add_parser("down", help="stop every service (the warehouse stays: `apparel db stop`)")
    sub.add_parser("status", help="each service: processes, memory, health")
    p = sub.add_parser("logs", help="follow the services' log")
    p.add_argument("-n", "--lines", type=int, default=50)
    p = sub.add_parser("run", help="run one service in the foreground (what supervisord runs)")
    p.add_argument("service", choices=ALL_SERVICES)
    p = sub.add_parser("check", help="one service's health check, as an exit code")
    p.add_argument("service", choices=ALL_SERVICES)
    sub.add_parser("init", help="prepare Airflow's database, users file and the dbt manifest (no start)")
    p = sub.add_parser("secrets", help="write the missing secrets into .env")
    p.add_argument("--docker", action="store_true", help="also POSTGRES_PASSWORD (docker-compose.yml)")


def run_command(args: argparse.Namespace) -> int:
    try:
        if args.stack_command == "up":
            services = [
                s
                for s in default_services(stack_settings())
                if not (args.no_superset and s == "superset") and not (args.no_docs and s == "dbt-docs")
            ]
            return up(services, timeout=args.timeout)
        if args.stack_command == "down":
            return down()
        if args.stack_command == "status":
            return status()
        if args.stack_command == "logs":
            return logs(args.lines)
        if args.stack_command == "check":
            return check(args.service)
        if args.stack_command == "init":
            prepare(stack_settings())
            return 0
        if args.stack_command == "secrets":
            generate_secrets(docker=args.docker)
            return 0
        run_service(args.service)
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m apparel.stack", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
