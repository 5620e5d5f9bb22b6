"""What the stream tests share: a store and a warehouse database, a slot of their own, helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from apparel.bench_stream import compare_store_warehouse
from apparel.config import PROJECT_ROOT, with_database
from apparel.store import MIRROR_SCHEMA, store_ddl
from apparel.stream import StreamStats, drop_slot, run_stream

DATASET_DIR = PROJECT_ROOT / "dataset"


@dataclass
class StreamEnv:
    store_url: str
    warehouse_url: str
    slot: str

    def run(self, **kwargs) -> StreamStats:
        """The stream until it has applied everything the store had when it started."""
        kwargs.setdefault("until_caught_up", True)
        return run_stream(self.store_url, self.warehouse_url, slot=self.slot, publication=self.slot, **kwargs)

    def thread(self, stop: threading.Event, **kwargs) -> tuple[threading.Thread, list]:
        """The stream in a thread until `stop` is set; its stats (or error) land in the returned list."""
        out: list = []

        def target():
            try:
                out.append(self.run(until_caught_up=False, stop_event=stop, **kwargs))
            except BaseException as e:  # handed to the test, which fails on it
                out.append(e)

        t = threading.Thread(target=target, daemon=True)
        t.start()
        return t, out

    def cli_env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "STORE_URL": self.store_url,
            "WAREHOUSE_URL": self.warehouse_url,
            "STREAM_SLOT": self.slot,
            "STREAM_PUBLICATION": self.slot,
            **extra,
        }

    def cli(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "apparel.cli", "stream", *args],
            env=self.cli_env(**kwargs.pop("env", {})),
            **kwargs,
        )

    def store(self, *statements: str) -> None:
        with psycopg.connect(self.store_url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def warehouse(self, query: str, params=None) -> list[tuple]:
        with psycopg.connect(self.warehouse_url) as conn:
            return conn.execute(query, params).fetchall()

    def state_lsn(self) -> int:
        """The stream's stored position (`_stream_state.lsn`) as a number of WAL bytes; 0 when none."""
        if not self.warehouse("select to_regclass(%s)", (f"{MIRROR_SCHEMA}._stream_state",))[0][0]:
            return 0
        rows = self.warehouse(
            f"select (lsn - '0/0')::bigint from {MIRROR_SCHEMA}._stream_state where slot_name = %s",
            (self.slot,),
        )
        return rows[0][0] if rows else 0

    def last_batch_id(self) -> int:
        rows = self.warehouse(
            f"select coalesce(max(batch_id), 0) from {MIRROR_SCHEMA}._stream_batches where slot_name = %s",
            (self.slot,),
        )
        return rows[0][0]

    def batches_after(self, batch_id: int) -> int:
        """Batches of store transactions (not the initial copy) committed after batch `batch_id`."""
        return self.warehouse(
            f"select count(*) from {MIRROR_SCHEMA}._stream_batches"
            " where slot_name = %s and batch_id > %s and transactions > 0",
            (self.slot, batch_id),
        )[0][0]

    def stream_sessions(self, *, waiting_on_lock: bool = False) -> int:
        """The stream's connections to the warehouse database (optionally: those waiting on a lock)."""
        return self.warehouse(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and application_name = 'apparel stream' and pid <> pg_backend_pid()"
            + (" and wait_event_type = 'Lock'" if waiting_on_lock else "")
        )[0][0]

    def slot_active(self) -> bool:
        with psycopg.connect(self.store_url) as conn:
            row = conn.execute(
                "select active from pg_replication_slots where slot_name = %s", (self.slot,)
            ).fetchone()
        return bool(row and row[0])

    def wait_released(self) -> None:
        """After a kill: wait until the dead stream's warehouse sessions have ended (whatever they had
        not committed is rolled back) and its walsender has let go of the slot."""
        wait_for(
            lambda: self.stream_sessions() == 0 and not self.slot_active(),
            "the killed stream's sessions to end",
        )

    def mirror_fingerprint(self) -> dict[str, str]:
        """An md5 per mirror table (rows with their bookkeeping), of its batches and of its position:
        equal fingerprints mean the stream committed nothing in between."""
        tables = ("shop_customer", "shop_order", "shop_orderline", "_stream_batches", "_stream_state")
        return {
            table: self.warehouse(
                f"select md5(coalesce(string_agg(t::text, '|' order by t::text), ''))"
                f" from {MIRROR_SCHEMA}.{table} t"
            )[0][0]
            for table in tables
        }

    def assert_mirrored(self) -> None:
        """The warehouse's live rows are exactly the store's rows, and the bookkeeping is consistent."""
        comparison = compare_store_warehouse(self.store_url, self.warehouse_url)
        assert comparison.exact, comparison
        assert_bookkeeping(self.warehouse_url, self.slot)


def wait_for(
    condition: Callable[[], object],
    what: str,
    *,
    timeout: float = 30.0,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
):
    """Poll `condition` until it holds (returned), failing after `timeout` s or when `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if proc is not None and proc.poll() is not None:
            output = log.read_text() if log is not None and log.exists() else ""
            pytest.fail(f"the process exited ({proc.returncode}) while waiting for {what}\n{output}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.02)


def assert_bookkeeping(warehouse_url: str, slot: str) -> None:
    """Per row: `_lsn` no later than its batch's and the stream's position, a batch that exists.
    Per batch: positions strictly increasing (a transaction applied twice would break this)."""
    with psycopg.connect(warehouse_url) as conn:
        state = conn.execute(
            f"select lsn from {MIRROR_SCHEMA}._stream_state where slot_name = %s", (slot,)
        ).fetchone()[0]
        for table in ("shop_customer", "shop_order", "shop_orderline"):
            bad = conn.execute(
                f"select count(*) from {MIRROR_SCHEMA}.{table} m"
                f" left join {MIRROR_SCHEMA}._stream_batches b on b.batch_id = m._batch_id"
                " where b.batch_id is null or m._lsn > b.lsn or m._lsn > %s or m._synced_at is null",
                (state,),
            ).fetchone()[0]
            assert bad == 0, f"{bad} rows of {table} with an inconsistent _lsn / _batch_id"
        out_of_order = conn.execute(
            f"select count(*) from (select lsn, lag(lsn) over (order by batch_id) prev"
            f" from {MIRROR_SCHEMA}._stream_batches where slot_name = %s) b where lsn <= prev",
            (slot,),
        ).fetchone()[0]
        assert out_of_order == 0, "a batch did not move the position forward: something was applied twice"


def seed_small_store(store_url: str, customers: int = 200, orders: int = 300) -> None:
    """The shop's tables with a few rows (the dataset's seed is the store helper's, tested there)."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        for statement in store_ddl():
            conn.execute(statement)
        conn.execute(
            "insert into shop_customer (first_name, last_name, gender)"
            " select 'First' || g, 'Last' || g, case when g %% 2 = 0 then 'Male' else 'Female' end"
            " from generate_series(1, %s) g",
            (customers,),
        )
        conn.execute(
            "insert into shop_order (customer_id, province_id, city_id, status)"
            " select 1 + g %% %s, 1, 101, 'pending' from generate_series(1, %s) g",
            (customers, orders),
        )
        conn.execute(
            "insert into shop_orderline (order_id, product_id, quantity, unit_price, amount)"
            " select 1 + g %% %s, 1 + g %% 40, 1 + g %% 3, 100000, (1 + g %% 3) * 100000"
            " from generate_series(1, %s) g",
            (orders, orders * 2),
        )


@pytest.fixture
def stream_env(pg_admin_url: str) -> Iterator[StreamEnv]:
    with make_stream_env(pg_admin_url, pg_admin_url) as env:
        yield env


@contextmanager
def make_stream_env(store_admin_url: str, warehouse_admin_url: str) -> Iterator[StreamEnv]:
    """A seeded store database and an empty warehouse database; slot and databases dropped after."""
    suffix = uuid.uuid4().hex[:10]
    store_db, warehouse_db, slot = f"st_{suffix}", f"wh_{suffix}", f"s_{suffix}"
    for admin, db in ((store_admin_url, store_db), (warehouse_admin_url, warehouse_db)):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'create database "{db}"')
    env = StreamEnv(
        with_database(store_admin_url, store_db), with_database(warehouse_admin_url, warehouse_db), slot
    )
    seed_small_store(env.store_url)
    try:
        yield env
    finally:
        drop_slot(store_admin_url, slot)
        with psycopg.connect(store_admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{store_db}" with (force)')
        try:
            with psycopg.connect(warehouse_admin_url, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{warehouse_db}" with (force)')
        except psycopg.OperationalError:
            pass  # the warehouse server of a restart test may be gone already


def run_writer(env: StreamEnv, rate: float, seconds: float, stop: threading.Event, seed: int = 1):
    """The shop simulator in a thread (orders, status changes, cancellations, line deletes)."""
    from apparel.simulate import run_simulator

    out: list = []

    def target():
        out.append(
            run_simulator(env.store_url, rate, seconds, seed=seed, dataset_dir=DATASET_DIR, stop_event=stop)
        )

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def data_dir_for_server(tmp_name: str) -> Path:
    from apparel.config import load_settings

    return load_settings().state_dir / "test-pg" / f"{tmp_name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
