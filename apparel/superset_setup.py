"""Run Apache Superset beside the pipeline and keep its dashboards as code.

Superset lives in its own environment, `.venv-superset` (it pins SQLAlchemy 1.4; the pipeline
needs 2.x), so this module never imports it: it drives Superset through its command line
(`superset/bootstrap.py`, gunicorn) and its REST API. `make superset` calls `start`:

1. `.env` gets a random SUPERSET_SECRET_KEY, SUPERSET_ADMIN_PASSWORD and SUPERSET_READER_PASSWORD
   when it has none (created from `.env.example` if missing);
2. the read-only PostgreSQL role `superset_reader` (SELECT on `core`, `marts` and the shop's
   real-time mirror `raw_store`, also on tables created later) is created or updated on the warehouse;
3. the metadata database is prepared (migrations, roles, admin user) when it changed;
4. gunicorn starts in the background (pid and log in $STATE_DIR/superset/) and answers /health;
5. the YAML assets of `superset/assets/` are imported with the assets import, which overwrites:
   importing again changes nothing and duplicates nothing.

`export` writes what users changed in the UI back into `superset/assets/`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import string
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import psycopg
import requests
import yaml
from psycopg import sql

from apparel.config import PROJECT_ROOT, Settings, ensure_secrets, load_settings, with_database
from apparel.roles import role_url

log = logging.getLogger(__name__)

SUPERSET_VENV = PROJECT_ROOT / ".venv-superset"
SUPERSET_DIR = PROJECT_ROOT / "superset"
CONFIG_PATH = SUPERSET_DIR / "superset_config.py"
BOOTSTRAP = SUPERSET_DIR / "bootstrap.py"
GUNICORN_CONF = SUPERSET_DIR / "gunicorn_conf.py"
ASSETS_DIR = SUPERSET_DIR / "assets"
REQUIREMENTS = PROJECT_ROOT / "requirements" / "superset.txt"

# Generated into .env on first start when neither the environment nor .env has them.
SECRET_SETTINGS = ("SUPERSET_SECRET_KEY", "SUPERSET_ADMIN_PASSWORD", "SUPERSET_READER_PASSWORD")
# The Sales dashboard reads core and marts; the Live orders dashboard the CDC stream's mirror raw_store.
READER_SCHEMAS = ("core", "marts", "raw_store")
ASSET_FOLDERS = ("databases", "datasets", "charts", "dashboards", "queries")
BUNDLE_ROOT = "apparel_assets"


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SupersetSettings:
    """Everything the launcher needs, resolved from the project's settings."""

    state_dir: Path
    warehouse_url: str
    metadata_url: str  # empty: SQLite in the state folder
    secret_key: str
    admin_user: str
    admin_password: str
    reader_user: str
    reader_password: str
    host: str = "127.0.0.1"
    port: int = 8088
    workers: int = 2

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "superset"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "gunicorn.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "superset.log"

    def env(self) -> dict[str, str]:
        """The environment of Superset's processes (superset_config.py reads it)."""
        env = {
            **os.environ,
            "SUPERSET_CONFIG_PATH": str(CONFIG_PATH),
            "STATE_DIR": str(self.state_dir),
            "SUPERSET_SECRET_KEY": self.secret_key,
            "SUPERSET_ADMIN_USER": self.admin_user,
            "SUPERSET_ADMIN_PASSWORD": self.admin_password,
            "SUPERSET_READER_USER": self.reader_user,
            "SUPERSET_READER_PASSWORD": self.reader_password,
            "SUPERSET_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            # superset_config.py hands the reader's password to this database only.
            **{
                f"SUPERSET_{k}": v
                for k, v in warehouse_template_values(self.warehouse_url, self.reader_user).items()
                if k.startswith("WAREHOUSE_")
            },
        }
        env.pop("SUPERSET_DATABASE_URL", None)
        if self.metadata_url:
            env["SUPERSET_DATABASE_URL"] = self.metadata_url
        return env


def superset_settings(settings: Settings, *, require_secrets: bool = True) -> SupersetSettings:
    missing = [name for name in SECRET_SETTINGS if not settings.get(name)]
    if missing and require_secrets:
        raise RuntimeError(f"{', '.join(missing)} not set: run `make superset` (it writes them into .env)")
    return SupersetSettings(
        state_dir=settings.state_dir,
        warehouse_url=settings.warehouse_url,
        metadata_url=metadata_url(settings),
        secret_key=settings.get("SUPERSET_SECRET_KEY"),
        admin_user=settings.get("SUPERSET_ADMIN_USER", "admin"),
        admin_password=settings.get("SUPERSET_ADMIN_PASSWORD"),
        reader_user=settings.get("SUPERSET_READER_USER", "superset_reader"),
        reader_password=settings.get("SUPERSET_READER_PASSWORD"),
        host=settings.get("SUPERSET_HOST", "127.0.0.1"),
        port=int(settings.get("SUPERSET_PORT", "8088")),
        workers=int(settings.get("SUPERSET_WORKERS", "2")),
    )


def metadata_url(settings: Settings) -> str:
    """Superset's own database: SUPERSET_DATABASE_URL, else a `superset` database on the embedded
    warehouse server, else (an external warehouse we do not administer) SQLite in the state folder."""
    if url := settings.get("SUPERSET_DATABASE_URL"):
        return url
    if settings.embedded:
        from apparel.roles import SUPERSET

        return settings.embedded_url("superset", SUPERSET)
    return ""


def ensure_env_secrets(env_file: Path | None = None, example: Path | None = None) -> list[str]:
    """Write a random value into `.env` for each Superset secret set neither there nor in the environment."""
    generators = {
        name: (lambda n=32 if name == "SUPERSET_SECRET_KEY" else 18: secrets.token_urlsafe(n))
        for name in SECRET_SETTINGS
    }
    return ensure_secrets(generators, env_file, example)


# --------------------------------------------------------------------------------------- warehouse side


def ensure_reader_role(
    admin_url: str, user: str, password: str, schemas: tuple[str, ...] = READER_SCHEMAS
) -> None:
    """Create or update the read-only login role Superset's warehouse connection uses, on a warehouse
    of your own (the embedded server's is made by apparel.roles with the rest). Idempotent.

    `admin_url` is the warehouse URL of the role that owns (and dbt-builds) the tables, with CREATEROLE:
    the default privileges granted here cover the tables it creates later, so dbt's rebuilds stay readable.
    """
    from apparel import roles

    role = sql.Identifier(user)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        roles.login_role(conn, user, password)
        roles.restrict_reader(conn, user)
        database = conn.execute("select current_database()").fetchone()[0]
        conn.execute(sql.SQL("grant connect on database {} to {}").format(sql.Identifier(database), role))
        for schema in schemas:
            conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
            roles.grant_select(conn, schema, None, [user])
    log.info("read-only role %s can read %s", user, ", ".join(schemas))


def prepare_reader(settings: Settings, ss: SupersetSettings) -> None:
    """The reader role, when nothing made it yet: the embedded server's and one created by `make roles`
    exist already (the owner of the tables may not create roles there); otherwise WAREHOUSE_URL's role
    creates it, as on a warehouse of your own administered by that one role."""
    if settings.embedded:
        return
    reader_url = role_url(ss.warehouse_url, ss.reader_user, ss.reader_password)
    try:
        psycopg.connect(reader_url, connect_timeout=10).close()
    except psycopg.OperationalError:
        ensure_reader_role(settings.warehouse_url, ss.reader_user, ss.reader_password)


def ensure_metadata_database(url: str) -> None:
    """Create Superset's metadata database on a PostgreSQL server when it does not exist."""
    if not url.startswith("postgresql"):
        return
    name = urlparse(url).path.lstrip("/")
    admin = with_database(url.replace("postgresql+psycopg2://", "postgresql://", 1), "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            log.info("created the metadata database %s", name)


def warehouse_template_values(warehouse_url: str, reader_user: str) -> dict[str, str]:
    """What the database asset's ${...} placeholders become: the configured warehouse's address."""
    parsed = urlparse(warehouse_url)
    return {
        "READER_USER": reader_user,
        "WAREHOUSE_HOST": parsed.hostname or "127.0.0.1",
        "WAREHOUSE_PORT": str(parsed.port or 5432),
        "WAREHOUSE_DB": unquote(parsed.path.lstrip("/")) or "postgres",
    }


# -------------------------------------------------------------------------------------------- lifecycle


def _db_revision(url: str, state_dir: Path) -> str | None:
    """The metadata database's alembic revision, or None when it has none (yet)."""
    try:
        if url:
            libpq = url.replace("postgresql+psycopg2://", "postgresql://", 1)
            with psycopg.connect(libpq, connect_timeout=5) as conn:
                row = conn.execute("select version_num from alembic_version").fetchone()
        else:
            path = state_dir / "superset" / "superset.db"
            if not path.exists():
                return None
            with contextlib.closing(sqlite3.connect(path)) as conn:
                row = conn.execute("select version_num from alembic_version").fetchone()
    except (psycopg.Error, sqlite3.Error):
        return None
    return row[0] if row else None


def _bootstrap_fingerprint(ss: SupersetSettings) -> str:
    parts = [REQUIREMENTS.read_text(), ss.metadata_url, ss.admin_user, ss.admin_password, ss.secret_key]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def bootstrap(ss: SupersetSettings, *, force: bool = False) -> bool:
    """Migrate the metadata database, sync roles and set the admin user, unless nothing changed.

    Superset's application start is slow (about 10 s), so this runs only when the Superset
    version, the metadata database, the admin login or the secret key changed. Returns True if it ran.
    """
    stamp = ss.run_dir / "bootstrap.json"
    fingerprint = _bootstrap_fingerprint(ss)
    if not force and stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("fingerprint") == fingerprint and saved.get("revision") == _db_revision(
            ss.metadata_url, ss.state_dir
        ):
            log.info("metadata database up to date (revision %s)", saved["revision"])
            return False
    ss.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = ss.run_dir / "bootstrap.log"
    started = time.monotonic()
    with log_path.open("w") as out:
        result = subprocess.run(
            [str(SUPERSET_VENV / "bin" / "python"), str(BOOTSTRAP)],
            env=ss.env(),
            cwd=ss.run_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        raise RuntimeError(f"Superset bootstrap failed (see {log_path}):\n{tail}")
    revision = log_path.read_text().split("revision ")[-1].strip()
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "revision": revision}))
    log.info("metadata database ready in %.1f s (revision %s)", time.monotonic() - started, revision)
    return True


def read_pid(ss: SupersetSettings) -> int | None:
    """The gunicorn master's pid when it is running, else None."""
    try:
        pid = int(ss.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if b"gunicorn" in cmdline else None


def is_healthy(base_url: str) -> bool:
    try:
        return requests.get(f"{base_url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0


def gunicorn_argv(ss: SupersetSettings) -> list[str]:
    """The web server's command line (run it with `ss.env()`, in `ss.run_dir`); see gunicorn_conf.py."""
    return [
        str(SUPERSET_VENV / "bin" / "gunicorn"),
        f"--bind={ss.host}:{ss.port}",
        f"--workers={ss.workers}",
        "--worker-class=gthread",
        "--threads=4",
        "--timeout=120",
        # Finite request limits (0 would mean unlimited): the longest request line gunicorn allows
        # (Superset's explore links carry their form data), and headers big enough for its cookies.
        "--limit-request-line=8190",
        "--limit-request-fields=100",
        "--limit-request-field_size=16384",
        # Preloads Superset in the master and gives each forked worker fresh connection pools.
        f"--config={GUNICORN_CONF}",
        "superset.app:create_app()",
    ]


def start_server(ss: SupersetSettings, *, timeout: float = 180) -> float:
    """Start gunicorn in the background and wait for /health. Returns the seconds it took."""
    if read_pid(ss) and is_healthy(ss.base_url):
        log.info("Superset already running (pid %s)", read_pid(ss))
        return 0.0
    if _port_in_use(ss.host, ss.port):
        raise RuntimeError(f"port {ss.port} is taken by another program; set SUPERSET_PORT in .env")
    ss.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = gunicorn_argv(ss)
    cmd.insert(-1, f"--pid={ss.pid_file}")
    started = time.monotonic()
    with ss.log_file.open("a") as out:
        out.write(f"\n--- start {datetime.now(UTC).isoformat()} ---\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            env=ss.env(),
            cwd=ss.run_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    while not is_healthy(ss.base_url):
        if proc.poll() is not None:
            tail = "\n".join(ss.log_file.read_text().splitlines()[-20:])
            raise RuntimeError(f"Superset exited with {proc.returncode} (see {ss.log_file}):\n{tail}")
        if time.monotonic() - started > timeout:
            stop_server(ss)
            raise TimeoutError(f"Superset did not answer {ss.base_url}/health in {timeout:.0f} s")
        time.sleep(0.5)
    # gunicorn writes its pid file itself; write it too in case the health check won the race.
    ss.pid_file.write_text(f"{proc.pid}\n")
    return time.monotonic() - started


def stop_server(ss: SupersetSettings, timeout: float = 30) -> bool:
    """Stop the gunicorn master started by `start_server` (and so its workers). True if one ran."""
    pid = read_pid(ss)
    if pid is None:
        ss.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists():
        log.warning("Superset (pid %s) did not stop in %.0f s; killing it", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    ss.pid_file.unlink(missing_ok=True)
    return True


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (from /proc)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


# ------------------------------------------------------------------------------------------ REST client


class SupersetClient:
    """A logged-in session on Superset's REST API (JWT plus the CSRF token that writes need)."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 60):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        response = self.session.post(
            f"{self.base_url}/api/v1/security/login",
            json={"username": username, "password": password, "provider": "db", "refresh": True},
            timeout=timeout,
        )
        response.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        csrf = self.get("/api/v1/security/csrf_token/")["result"]
        self.session.headers.update({"X-CSRFToken": csrf, "Referer": self.base_url})

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    def import_assets(self, bundle: bytes) -> None:
        self.post("/api/v1/assets/import/", files={"bundle": ("assets.zip", bundle, "application/zip")})

    def export_assets(self) -> bytes:
        return self.request("GET", "/api/v1/assets/export/").content

    def find(self, resource: str, column: str, value: str) -> dict[str, Any]:
        q = f"(filters:!((col:{column},opr:eq,value:'{value}')))"
        result = self.get(f"/api/v1/{resource}/", params={"q": q})["result"]
        if len(result) != 1:
            raise LookupError(f"{len(result)} {resource} with {column}={value!r}")
        return result[0]

    def dashboard_charts(self, slug: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v1/dashboard/{slug}/charts")["result"]

    def chart_data(self, chart_id: int) -> list[dict[str, Any]]:
        """The chart's queries' results, as its saved query context asks for them."""
        return self.get(f"/api/v1/chart/{chart_id}/data/", params={"format": "json", "type": "full"})[
            "result"
        ]


# ------------------------------------------------------------------------------------------- assets


def _asset_files(assets_dir: Path) -> Iterator[Path]:
    for folder in ASSET_FOLDERS:
        yield from sorted((assets_dir / folder).rglob("*.yaml"))


def build_bundle(assets_dir: Path, template_values: dict[str, str]) -> bytes:
    """The assets as an import zip: one top-level folder, metadata.yaml, the YAML files.

    Database files are templates: ${WAREHOUSE_HOST} and the like become the configured warehouse.
    """
    buffer = io.BytesIO()
    metadata = {"version": "1.0.0", "type": "assets", "timestamp": datetime.now(UTC).isoformat()}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(f"{BUNDLE_ROOT}/metadata.yaml", yaml.safe_dump(metadata))
        for path in _asset_files(assets_dir):
            text = path.read_text()
            if path.parent.name == "databases":
                text = string.Template(text).substitute(template_values)
            bundle.writestr(f"{BUNDLE_ROOT}/{path.relative_to(assets_dir).as_posix()}", text)
    return buffer.getvalue()


def import_assets(client: SupersetClient, ss: SupersetSettings, assets_dir: Path = ASSETS_DIR) -> int:
    """Import (overwrite) every asset; returns how many files were sent."""
    values = warehouse_template_values(ss.warehouse_url, ss.reader_user)
    count = sum(1 for _ in _asset_files(assets_dir))
    client.import_assets(build_bundle(assets_dir, values))
    return count


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (SQL, markdown, query contexts) so diffs stay readable."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data and not any(line != line.rstrip() for line in data.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def normalize_asset(kind: str, doc: dict[str, Any], chart_ids: dict[int, int]) -> dict[str, Any]:
    """Strip what only means something in one Superset instance (numeric ids), so exports are stable.

    Files link by uuid; the importer gives charts and datasets their ids back. Chart ids in a
    dashboard become placeholders 1..n (consistent across its position and filter scopes).
    """
    if kind == "charts":
        params = doc.get("params") or {}
        for key in ("dashboards", "slice_id"):
            params.pop(key, None)
        if "datasource" in params:
            params["datasource"] = "0__table"
        if doc.get("query_context"):
            qc = json.loads(doc["query_context"])
            qc["datasource"] = {"id": 0, "type": "table"}
            form_data = qc.get("form_data") or {}
            for key in ("dashboards", "slice_id"):
                form_data.pop(key, None)
            if "datasource" in form_data:
                form_data["datasource"] = "0__table"
            for query in qc.get("queries", []):
                if "datasource" in query:
                    query["datasource"] = qc["datasource"]
            doc["query_context"] = json.dumps(qc, indent=2) + "\n"
    elif kind == "dashboards":
        metadata = doc.get("metadata") or {}
        for item in (doc.get("position") or {}).values():
            if isinstance(item, dict) and item.get("type") == "CHART" and "chartId" in item.get("meta", {}):
                item["meta"]["chartId"] = chart_ids.setdefault(item["meta"]["chartId"], len(chart_ids) + 1)
        for native_filter in metadata.get("native_filter_configuration", []):
            native_filter.pop("chartsInScope", None)
            native_filter.pop("tabsInScope", None)
            scope = native_filter.get("scope") or {}
            if "excluded" in scope:
                scope["excluded"] = sorted(chart_ids[i] for i in scope["excluded"] if i in chart_ids)
        for key in ("chart_configuration", "global_chart_configuration"):
            metadata.pop(key, None)
        for key in ("timed_refresh_immune_slices",):
            if key in metadata:
                metadata[key] = [chart_ids[i] for i in metadata[key] if i in chart_ids]
        metadata.pop("positions", None)
    return doc


def export_assets(client: SupersetClient, ss: SupersetSettings, assets_dir: Path = ASSETS_DIR) -> list[str]:
    """Write Superset's current assets into `assets_dir`, keeping each file's name (matched by uuid).

    New assets get Superset's file name; files whose uuid is no longer in Superset are removed.
    The warehouse connection's URI goes back to its template. Returns the files that changed.
    """
    existing: dict[str, Path] = {}
    templates: dict[str, str] = {}
    for path in _asset_files(assets_dir):
        doc = yaml.safe_load(path.read_text())
        existing[str(doc["uuid"])] = path
        if path.parent.name == "databases":
            templates[str(doc["uuid"])] = doc["sqlalchemy_uri"]
    changed: list[str] = []
    seen: set[Path] = set()
    with zipfile.ZipFile(io.BytesIO(client.export_assets())) as bundle:
        entries = []
        for name in bundle.namelist():
            parts = PurePosixPath(name).parts
            if len(parts) < 3 or parts[1] not in ASSET_FOLDERS:
                continue
            entries.append((parts[1], PurePosixPath(*parts[1:]), yaml.safe_load(bundle.read(name))))
        for kind, relative, doc in entries:
            uuid = str(doc["uuid"])
            if kind == "databases" and uuid in templates:
                doc["sqlalchemy_uri"] = templates[uuid]
            doc = normalize_asset(kind, doc, {})
            target = existing.get(uuid) or assets_dir / relative
            text = dump_yaml(doc)
            seen.add(target)
            if not target.exists() or target.read_text() != text:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                changed.append(str(target.relative_to(assets_dir)))
    for path in existing.values():
        if path not in seen:
            path.unlink()
            changed.append(f"{path.relative_to(assets_dir)} (removed)")
    return changed


# ------------------------------------------------------------------------------------------------ CLI


def _settings_after_secrets() -> Settings:
    written = ensure_env_secrets()
    if written:
        log.info("generated %s into .env", ", ".join(written))
    return load_settings()


def cmd_start(args: argparse.Namespace) -> int:
    settings = _settings_after_secrets()
    ss = superset_settings(settings)
    if not (SUPERSET_VENV / "bin" / "gunicorn").exists():
        raise RuntimeError("the Superset environment is missing: run `make superset-venv`")
    prepare_reader(settings, ss)
    from apparel.stack import warn_if_exposed

    warn_if_exposed("Superset", ss.host)
    began = time.monotonic()
    bootstrap(ss)
    seconds = start_server(ss)
    client = SupersetClient(ss.base_url, ss.admin_user, ss.admin_password)
    count = import_assets(client, ss)
    pid = read_pid(ss)
    total = time.monotonic() - began
    if seconds:
        print(f"Superset started in {seconds:.1f} s ({total:.1f} s with preparation and import), ", end="")
        print(f"pid {pid}, {rss_mb(pid):.0f} MB RSS" if pid else "")
    print(f"imported {count} asset files from {ASSETS_DIR.relative_to(PROJECT_ROOT)}/")
    print(f"Superset: {ss.base_url}/superset/dashboard/sales/")
    print(f"live:     {ss.base_url}/superset/dashboard/live-orders/")
    print(f"markets:  {ss.base_url}/superset/dashboard/customers-markets/")
    print(f"login:    {ss.admin_user}, password: SUPERSET_ADMIN_PASSWORD in .env")
    print(f"log:      {ss.log_file}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    ss = superset_settings(load_settings(), require_secrets=False)
    print("Superset stopped" if stop_server(ss) else "Superset was not running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ss = superset_settings(load_settings(), require_secrets=False)
    pid = read_pid(ss)
    if pid and is_healthy(ss.base_url):
        print(f"Superset running on {ss.base_url} (pid {pid}, {rss_mb(pid):.0f} MB RSS)")
        return 0
    print(
        "Superset not running" if pid is None else f"Superset (pid {pid}) not answering {ss.base_url}/health"
    )
    return 3


def cmd_import(args: argparse.Namespace) -> int:
    ss = superset_settings(load_settings())
    client = SupersetClient(ss.base_url, ss.admin_user, ss.admin_password)
    print(f"imported {import_assets(client, ss)} asset files")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ss = superset_settings(load_settings())
    client = SupersetClient(ss.base_url, ss.admin_user, ss.admin_password)
    changed = export_assets(client, ss)
    for name in changed:
        print(f"  {name}")
    print(f"{len(changed)} file(s) changed in {ASSETS_DIR.relative_to(PROJECT_ROOT)}/")
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    written = ensure_env_secrets()
    print(f"generated {', '.join(written)} into .env" if written else "the Superset secrets are set")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apparel.superset_setup", description=__doc__.split("\n")[0]
    )
    commands = {
        "start": (cmd_start, "prepare, start in the background, import the assets, print URL and login"),
        "stop": (cmd_stop, "stop the server started by start"),
        "status": (cmd_status, "is it running?"),
        "import": (cmd_import, "import superset/assets/ into the running server (overwrites)"),
        "export": (
            cmd_export,
            "write the running server's dashboards, charts, datasets into superset/assets/",
        ),
        "secrets": (cmd_secrets, "generate the missing Superset secrets into .env"),
    }
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_text) in commands.items():
        sub.add_parser(name, help=help_text).set_defaults(func=func)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (RuntimeError, TimeoutError, requests.RequestException, psycopg.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
