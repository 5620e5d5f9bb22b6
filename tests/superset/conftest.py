"""Superset against a warehouse the pipeline built: one server for the whole session.

The warehouse is a fresh database on the suite's own PostgreSQL, loaded with the committed dataset
and built with `dbt build`. Superset's metadata database sits on the same server (as it does on the
embedded warehouse), Superset listens on a free port, and its state lives in a temporary folder:
a developer's running Superset, `.env` and warehouse are never touched.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse, urlunparse

import psycopg
import pytest

from apparel.config import with_database
from apparel.dbt_runner import run_dbt
from apparel.embedded_pg import free_port
from apparel.superset_setup import (
    SUPERSET_VENV,
    SupersetClient,
    SupersetSettings,
    bootstrap,
    ensure_reader_role,
    import_assets,
    start_server,
    stop_server,
)
from tests.conftest import load_all


@dataclass(frozen=True)
class RunningSuperset:
    settings: SupersetSettings
    client: SupersetClient
    warehouse_url: str  # as the warehouse's owner
    start_seconds: float

    def reader_url(self) -> str:
        """The warehouse as Superset's read-only role sees it."""
        s = self.settings
        parsed = urlparse(self.warehouse_url)
        netloc = f"{quote(s.reader_user)}:{quote(s.reader_password)}@{parsed.hostname}:{parsed.port}"
        return urlunparse(parsed._replace(netloc=netloc))


def _create_database(admin_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    return name


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def built_warehouse(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database holding the committed dataset in raw.* and the model dbt builds from it."""
    name = _create_database(pg_admin_url, "t_superset_wh")
    url = with_database(pg_admin_url, name)
    try:
        load_all(url)
        result = run_dbt(
            ["build", "--quiet"], url=url, target_path=tmp_path_factory.mktemp("dbt"), check=False
        )
        assert result.returncode == 0, "dbt build failed; see its output above"
        yield url
    finally:
        _drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def superset(
    built_warehouse: str, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSuperset]:
    if not (SUPERSET_VENV / "bin" / "gunicorn").exists():
        pytest.fail("the Superset environment is missing: run `make superset-venv`")
    metadata_db = _create_database(pg_admin_url, "t_superset_meta")
    settings = SupersetSettings(
        state_dir=Path(tmp_path_factory.mktemp("superset-state")),
        warehouse_url=built_warehouse,
        metadata_url=with_database(pg_admin_url, metadata_db),
        secret_key=secrets.token_urlsafe(32),
        admin_user="admin",
        admin_password=secrets.token_urlsafe(12),
        reader_user="superset_reader",
        reader_password=secrets.token_urlsafe(12),
        port=free_port(),
    )
    ensure_reader_role(built_warehouse, settings.reader_user, settings.reader_password)
    try:
        bootstrap(settings)
        seconds = start_server(settings, timeout=240)
        client = SupersetClient(settings.base_url, settings.admin_user, settings.admin_password)
        import_assets(client, settings)
        yield RunningSuperset(settings, client, built_warehouse, seconds)
    finally:
        stop_server(settings)
        _drop_database(pg_admin_url, metadata_db)
