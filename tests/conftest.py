"""Shared fixtures: a real PostgreSQL server started by the test suite, one database per test.

The server is the same embedded PostgreSQL the project runs, in its own data
folder on a free port, so the tests never touch a developer's warehouse. It
follows the same rules: scram-sha-256 only, with a superuser password of its own
(generated here, never written to `.env`).
`TEST_WAREHOUSE_ADMIN_URL` points the suite at an existing server instead
(a superuser URL; each test still gets a database of its own).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apparel.airflow_env import AIRFLOW
from apparel.airflow_env import airflow_env as project_airflow_env
from apparel.config import PROJECT_ROOT, load_settings, with_database
from apparel.embedded_pg import EmbeddedServer, free_port
from apparel.loader import load_source
from apparel.sources import SOURCES

DATASET_DIR = PROJECT_ROOT / "dataset"


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of the maintenance database of a running test server."""
    if url := os.environ.get("TEST_WAREHOUSE_ADMIN_URL"):
        yield url
        return
    # Under the state folder, not /tmp/pytest-*: as root the server runs as another user who must reach it.
    data_dir = load_settings().state_dir / "test-pg" / f"pg-{os.getpid()}"
    server = EmbeddedServer(data_dir, free_port(), secrets.token_urlsafe(18))
    server.start()
    try:
        yield server.url("postgres")
    finally:
        server.destroy()


@pytest.fixture
def fresh_db(pg_admin_url: str) -> Iterator[str]:
    """An empty database of its own for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = with_database(pg_admin_url, name)
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


# Settings of the project and of the programs it runs (Airflow, dbt, Superset, libpq, make) that a
# developer's shell may hold.
SETTING_PREFIXES = (
    "AIRFLOW",
    "APPAREL_",
    "COSMOS",
    "DBT_",
    "MAKE",
    "MFLAGS",
    "PG",
    "SIMULATE",
    "STORE_",
    "STREAM_",
    "SUPERSET",
    "TEST_WAREHOUSE",
    "WAREHOUSE_",
)


def example_settings() -> dict[str, str]:
    """Every setting `.env.example` lists, with its default."""
    values = {}
    for line in (PROJECT_ROOT / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def isolated_environment() -> dict[str, str]:
    """This process's environment without any project setting (those of `.env.example`, ENV_FILE)
    or setting of the programs it runs: for running `make` targets as on a new machine, with only
    the settings a test gives them."""
    names = {*example_settings(), "ENV_FILE"}
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith(SETTING_PREFIXES)}


def query(url: str, sql: str, params: tuple | dict | None = None) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(url: str, sql: str, params: tuple | dict | None = None) -> Any:
    return query(url, sql, params)[0][0]


@pytest.fixture
def dataset_copy(tmp_path: Path) -> Path:
    """A writable copy of the committed dataset, to break or to extend as a later extract."""
    target = tmp_path / "dataset"
    shutil.copytree(DATASET_DIR, target)
    return target


def load_all(url: str, dataset_dir: Path = DATASET_DIR) -> None:
    for source in SOURCES:
        load_source(url, source, dataset_dir)


@pytest.fixture
def loaded_db(fresh_db: str) -> str:
    """A fresh database with the committed dataset loaded into raw.*."""
    load_all(fresh_db)
    return fresh_db


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for running the project's DAGs with the Airflow CLI: own home, own SQLite metadata."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = project_airflow_env(home=home)
    env["AIRFLOW__COSMOS__CACHE_DIR"] = str(home / "cosmos")
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True)
    return env


def airflow_dags_test(env: dict[str, str], dag_id: str, conf: str | None = None, **extra_env: str):
    """`airflow dags test` as a user runs it; returns the completed process (output captured)."""
    cmd = [str(AIRFLOW), "dags", "test", dag_id] + (["-c", conf] if conf else [])
    return subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True, timeout=900)
