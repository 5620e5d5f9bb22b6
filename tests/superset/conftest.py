"""Superset against a warehouse the pipeline built: one server for the whole session.

The warehouse is a fresh database on the suite's own PostgreSQL, loaded with the committed dataset
and built with `dbt build`. Superset's metadata database sits on the same server (as it does on the
embedded warehouse), Superset listens on a free port, and its state lives in a temporary folder:
a developer's running Superset, `.env` and warehouse are never touched.

The live dashboard reads `raw_store`, the stream's mirror of the shop; `live_store` fills it the
real way: a shop database, the CDC stream, the simulator.
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

import psycopg
import pytest

from apparel.config import with_database
from apparel.dbt_runner import run_dbt
from apparel.embedded_pg import free_port
from apparel.simulate import run_simulator
from apparel.store import ensure_store
from apparel.stream import drop_slot, run_stream
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
from tests.conftest import DATASET_DIR, load_all


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
        # A role of its own: roles are cluster-wide, TEST_WAREHOUSE_ADMIN_URL may be a shared server.
        reader_user=f"t_reader_{uuid.uuid4().hex[:8]}",
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
        with psycopg.connect(built_warehouse, autocommit=True) as conn:
            conn.execute(f'drop owned by "{settings.reader_user}"')  # its grants and default privileges
            conn.execute(f'drop role "{settings.reader_user}"')


# The live dashboard's "last hour": the current minute and the 59 before it.
WINDOW = "date_trunc('minute', now()) - interval '59 minutes'"


@dataclass(frozen=True)
class LiveStore:
    """The shop's database, streamed into the Superset warehouse's raw_store while the session runs.

    The figures are the store's own, the truth the live dashboard must show: orders and revenue of
    the last hour, cancelled orders excluded.
    """

    store_url: str
    warehouse_url: str
    orders: int
    revenue: int
    cancelled: int

    def shop(self, statement: str, params: tuple = ()) -> Any:
        """Write to the shop's database as the shop does; returns the first row, if any."""
        with psycopg.connect(self.store_url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchone() if cur.description else None

    def wait_mirrored(self, condition: str, params: tuple = (), timeout: float = 15) -> None:
        """Wait until `condition` (a boolean query) holds on the warehouse: the stream applied it."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.warehouse_url, autocommit=True) as conn:
            # No row yet counts as "not yet": the row itself may still be on its way.
            while not (conn.execute(condition, params).fetchone() or (False,))[0]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the stream did not mirror {condition!r} in {timeout:.0f} s")
                time.sleep(0.1)


def store_figures(store_url: str) -> tuple[int, int, int]:
    """Orders (not cancelled), their revenue, and cancelled orders of the last hour, in the store."""
    with psycopg.connect(store_url) as conn:
        orders, cancelled = conn.execute(
            "select count(*) filter (where status <> 'cancelled'),"
            f" count(*) filter (where status = 'cancelled') from shop_order where created_at >= {WINDOW}"
        ).fetchone()
        revenue = conn.execute(
            "select coalesce(sum(l.amount), 0) from shop_orderline as l"
            " join shop_order as o on o.id = l.order_id"
            f" where o.status <> 'cancelled' and o.created_at >= {WINDOW}"
        ).fetchone()[0]
    return orders, revenue, cancelled


@pytest.fixture(scope="session")
def live_store(superset: RunningSuperset, pg_admin_url: str) -> Iterator[LiveStore]:
    """The real path into raw_store, in about five seconds: the shop's database seeded from the
    dataset, the CDC stream's initial copy, then the simulator taking orders for three seconds
    while the stream runs; the newest order is cancelled and the one before deleted in the shop
    (tombstones for it and its lines). The stream keeps running for the browser test's new order.
    """
    store_db = _create_database(pg_admin_url, "t_superset_store")
    store_url = with_database(pg_admin_url, store_db)
    slot = f"t_superset_{uuid.uuid4().hex[:8]}"
    stream = functools.partial(run_stream, store_url, superset.warehouse_url, slot=slot, publication=slot)
    stop = threading.Event()
    running = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            ensure_store(store_url, DATASET_DIR)
            stream(until_caught_up=True)  # creates the slot and copies the seeded rows
            running = pool.submit(stream, stop_event=stop)
            run_simulator(store_url, rate=10, duration=3, seed=4, dataset_dir=DATASET_DIR)
            with psycopg.connect(store_url, autocommit=True) as conn:
                newest = [r[0] for r in conn.execute("select id from shop_order order by id desc limit 2")]
                conn.execute("update shop_order set status = 'cancelled' where id = %s", (newest[0],))
                conn.execute("delete from shop_order where id = %s", (newest[1],))
            live = LiveStore(store_url, superset.warehouse_url, *store_figures(store_url))
            live.wait_mirrored(
                "select _deleted_at is not null from raw_store.shop_order where id = %s", (newest[1],)
            )
            yield live
        finally:
            stop.set()
            if running is not None:
                running.result(timeout=60)
            drop_slot(pg_admin_url, slot)
            _drop_database(pg_admin_url, store_db)
