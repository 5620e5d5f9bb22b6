"""Superset against a warehouse the pipeline built: one server for the whole session.

The warehouse is a fresh database on the suite's own PostgreSQL, loaded with the committed dataset
and built with `dbt build`. Superset's metadata database sits on the same server (as it does on the
embedded warehouse), Superset listens on a free port, and its state lives in a temporary folder:
a developer's running Superset, `.env` and warehouse are never touched.

The live dashboard reads `raw_store`, the stream's mirror of the shop; `live_store` fills it with
orders of the last hour (some cancelled, some deleted), older orders, and stream batches.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlparse, urlunparse

import psycopg
import pytest

from apparel.config import with_database
from apparel.dbt_runner import run_dbt
from apparel.embedded_pg import free_port
from apparel.store import mirror_ddl
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


@dataclass(frozen=True)
class LiveStore:
    """What `live_store` put into raw_store, as the live dashboard must show it."""

    orders: int  # created in the last hour, neither cancelled nor deleted
    revenue: int  # their lines' amounts, deleted lines left out
    cancelled: int
    batches: int


def fill_raw_store(url: str, seed: int = 4) -> LiveStore:
    """Orders, lines and stream batches as the CDC stream would have mirrored them, relative to now.

    In the last hour: orders a minute to 45 minutes old (the dashboard's window is the current
    minute and the 59 before it, so they stay inside while the suite runs), every 7th cancelled,
    every 11th deleted (tombstone), every 9th line deleted. Outside it: orders two hours old.
    """
    rng = random.Random(seed)
    with psycopg.connect(url) as conn:
        for statement in mirror_ddl():
            conn.execute(statement)
        now = conn.execute("select now()").fetchone()[0]
        cities = [
            r[0] for r in conn.execute("select city_id from core.dim_locations order by city_id limit 8")
        ]
        if not cities:
            raise RuntimeError("core.dim_locations is empty: the warehouse was not built")
        base_id = conn.execute("select coalesce(max(id), 0) + 1000 from raw_store.shop_order").fetchone()[0]
        first_customer = conn.execute(
            "select coalesce(max(id), 0) + 1 from raw_store.shop_customer"
        ).fetchone()[0]
        customers = [
            (first_customer + i, first, last, gender)
            for i, (first, last, gender) in enumerate(
                [("Ayu", "Lestari", "Female"), ("Budi", "Santoso", "Male"), ("Citra", "Wijaya", "Female")]
            )
        ]
        conn.cursor().executemany(
            "insert into raw_store.shop_customer (id, first_name, last_name, gender, created_at, updated_at,"
            " _lsn, _store_committed_at, _synced_at) values (%s, %s, %s, %s, %s, %s, '0/1', %s, %s)",
            [(*c, now - timedelta(days=30), now - timedelta(days=30), now, now) for c in customers],
        )
        orders, lines = [], []
        expected_orders = expected_revenue = cancelled = 0
        ages = [timedelta(minutes=1 + i * 1.25) for i in range(36)] + [timedelta(hours=2)] * 3
        for i, age in enumerate(ages):
            order_id = base_id + i
            status = "cancelled" if i % 7 == 3 else rng.choice(("pending", "paid", "shipped"))
            deleted = now - age / 2 if i % 11 == 5 else None
            created = now - age
            orders.append((order_id, rng.choice(customers)[0], rng.choice(cities), status, created, deleted))
            amount = 0
            for j in range(1 + i % 3):
                quantity, price = 1 + (i + j) % 3, rng.choice((129_000, 249_000, 399_000))
                line_deleted = now - age / 2 if (i + j) % 9 == 4 else None
                lines.append(
                    (order_id * 10 + j, order_id, quantity, price, quantity * price, created, line_deleted)
                )
                amount += quantity * price if line_deleted is None else 0
            in_window = age < timedelta(hours=1) and deleted is None
            cancelled += in_window and status == "cancelled"
            if in_window and status != "cancelled":
                expected_orders += 1
                expected_revenue += amount
        conn.cursor().executemany(
            "insert into raw_store.shop_order (id, customer_id, province_id, city_id, status, created_at,"
            " updated_at, _deleted_at, _lsn, _store_committed_at, _synced_at)"
            " select %s, %s, l.province_id, %s, %s, %s, %s, %s, '0/1', %s, %s"
            " from core.dim_locations as l where l.city_id = %s",
            [
                (oid, cust, city, status, at, at, deleted, at, at, city)
                for oid, cust, city, status, at, deleted in orders
            ],
        )
        conn.cursor().executemany(
            "insert into raw_store.shop_orderline (id, order_id, product_id, quantity, unit_price, amount,"
            " created_at, updated_at, _deleted_at, _lsn, _store_committed_at, _synced_at)"
            " values (%s, %s, 1, %s, %s, %s, %s, %s, %s, '0/1', %s, %s)",
            [(*line[:6], line[5], line[6], line[5], line[5]) for line in lines],
        )
        # One batch about every two minutes, the last one seconds ago; 1 to 5 transactions each.
        batches = [
            (
                now - timedelta(minutes=2 * k, seconds=3),
                [round(rng.uniform(20, 900), 1) for _ in range(1 + (k + 2) % 5)],
            )
            for k in range(22)
        ]
        conn.cursor().executemany(
            "insert into raw_store._stream_batches (slot_name, lsn, transactions, changes,"
            " first_store_commit, last_store_commit, committed_at, apply_ms, lag_ms)"
            " values ('apparel_cdc', '0/1', %s, %s, %s, %s, %s, 4.2, %s)",
            [(len(lag), 3 * len(lag), at, at, at, lag) for at, lag in reversed(batches)],
        )
    return LiveStore(expected_orders, expected_revenue, cancelled, len(batches))


@pytest.fixture(scope="session")
def live_store(superset: RunningSuperset) -> LiveStore:
    """raw_store filled for the live dashboard (after dbt built the marts the Sales tests check)."""
    return fill_raw_store(superset.warehouse_url)
