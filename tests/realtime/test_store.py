"""The shop's database: created, seeded from the extracts once, all or nothing, where STORE_URL says."""

from __future__ import annotations

import csv
import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from apparel.config import PROJECT_ROOT, with_database
from apparel.readers import SourceError
from apparel.store import STORE_TABLES, StoreError, ensure_store, reset_store, store_status
from tests.conftest import DATASET_DIR, query, scalar

APPAREL = PROJECT_ROOT / ".venv" / "bin" / "apparel"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _store_fingerprint(url: str) -> list[tuple]:
    """Every row of every shop table, as text: equal fingerprints mean nothing changed."""
    return [
        (
            t.name,
            scalar(url, f"select md5(coalesce(string_agg(t::text, '|' order by id), '')) from {t.name} t"),
        )
        for t in STORE_TABLES
    ]


def test_seed_copies_the_extracts_with_their_ids(fresh_db: str) -> None:
    orders = _csv_rows(DATASET_DIR / "orders.csv")
    lines = _csv_rows(DATASET_DIR / "order_details.csv")
    customers = pq.read_table(DATASET_DIR / "customers.parquet").num_rows

    seeded = ensure_store(fresh_db, DATASET_DIR)

    assert seeded == customers + len(orders) + len(lines)
    counts = {s.table: (s.rows, s.max_id) for s in store_status(fresh_db)}
    assert counts == {
        "shop_customer": (customers, customers),
        "shop_order": (len(orders), max(int(o["order_id"]) for o in orders)),
        "shop_orderline": (len(lines), max(int(d["order_detail_id"]) for d in lines)),
    }
    assert scalar(fresh_db, "select sum(amount) from shop_orderline") == sum(
        int(d["unit_sales"]) for d in lines
    )
    assert scalar(fresh_db, "select sum(quantity) from shop_orderline") == sum(int(d["qty"]) for d in lines)
    assert scalar(fresh_db, "select count(*) from shop_orderline where amount <> quantity * unit_price") == 0
    assert query(fresh_db, "select distinct status from shop_order") == [("delivered",)]
    # order_date is the shop's local time in Jakarta (UTC+7, no daylight saving).
    stored = dict(
        query(
            fresh_db,
            "select id, to_char(created_at at time zone 'UTC' + interval '7 hours',"
            " 'YYYY-MM-DD HH24:MI:SS.MS') from shop_order",
        )
    )
    assert stored == {int(o["order_id"]): o["order_date"] for o in orders}
    # The shop's next rows get ids after the dataset's.
    with psycopg.connect(fresh_db) as conn:
        new_id = conn.execute(
            "insert into shop_order (customer_id, province_id, city_id) values (1, 1, 1) returning id"
        ).fetchone()[0]
        conn.rollback()
    assert new_id == len(orders) + 1


def test_init_twice_seeds_nothing_and_changes_nothing(fresh_db: str) -> None:
    assert ensure_store(fresh_db, DATASET_DIR) > 0
    before = _store_fingerprint(fresh_db)

    assert ensure_store(fresh_db, DATASET_DIR) == 0

    assert _store_fingerprint(fresh_db) == before


def test_a_bad_extract_leaves_no_half_seeded_store(fresh_db: str, dataset_copy: Path) -> None:
    details = dataset_copy / "order_details.csv"
    text = details.read_text().splitlines()
    text[5] = text[5].rsplit(",", 1)[0] + ",not-a-number"
    details.write_text("\n".join(text) + "\n")

    with pytest.raises(SourceError, match=r"order_details.csv, line 6, column unit_sales"):
        ensure_store(fresh_db, dataset_copy)

    # The tables are created in the seed's transaction too: nothing is left behind.
    assert scalar(fresh_db, "select to_regclass('shop_order') is null")
    assert ensure_store(fresh_db, DATASET_DIR) > 0


def test_orphans_are_left_out_and_duplicate_ids_named(
    fresh_db: str, dataset_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    details = dataset_copy / "order_details.csv"
    lines = _csv_rows(details)
    with details.open("a") as f:
        f.write("999999999,888888888,1,2,280000,560000\n")  # an order line whose order is not in orders.csv

    ensure_store(fresh_db, dataset_copy)

    assert scalar(fresh_db, "select count(*) from shop_orderline") == len(lines)
    assert "order_details.csv: 1 row(s) left out of the store" in caplog.text

    orders = dataset_copy / "orders.csv"
    with orders.open("a") as f:
        f.write(orders.read_text().splitlines()[1] + "\n")  # the first order again
    before = _store_fingerprint(fresh_db)
    with pytest.raises(StoreError, match=r"orders.csv: duplicate key value .*\(id\)=\(1\) already exists"):
        reset_store(fresh_db, dataset_copy, create_database=False)
    # The reset is one transaction: the store is as it was.
    assert _store_fingerprint(fresh_db) == before


def test_reset_rebuilds_the_seeded_store(fresh_db: str) -> None:
    ensure_store(fresh_db, DATASET_DIR)
    before = _store_fingerprint(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("delete from shop_orderline where id in (select min(id) from shop_orderline)")

    reset_store(fresh_db, DATASET_DIR, create_database=False)

    assert _store_fingerprint(fresh_db) == before


def test_the_store_database_is_created_only_when_allowed(pg_admin_url: str) -> None:
    name = f"store_{uuid.uuid4().hex[:8]}"
    url = with_database(pg_admin_url, name)
    try:
        with pytest.raises(StoreError, match=f"cannot connect to the store database '{name}'"):
            ensure_store(url, DATASET_DIR, create_database=False)
        assert not scalar(pg_admin_url, "select exists (select from pg_database where datname = %s)", (name,))

        assert ensure_store(url, DATASET_DIR) > 0
        assert scalar(url, "select count(*) from shop_customer") > 0
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def _apparel(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(APPAREL), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_cli_store_init_uses_store_url_and_creates_no_database(fresh_db: str, pg_admin_url: str) -> None:
    orders = len(_csv_rows(DATASET_DIR / "orders.csv"))
    lines = len(_csv_rows(DATASET_DIR / "order_details.csv"))
    customers = pq.read_table(DATASET_DIR / "customers.parquet").num_rows

    result = _apparel("store", "init", STORE_URL=fresh_db)
    assert result.returncode == 0, result.stderr
    assert f"store seeded with {customers + orders + lines:,} rows" in result.stdout
    assert scalar(fresh_db, "select count(*) from shop_orderline") == lines

    again = _apparel("store", "status", STORE_URL=fresh_db)
    assert again.returncode == 0 and f"{orders:,}" in again.stdout

    # A STORE_URL naming a missing database is reported, not created.
    missing = f"nostore_{uuid.uuid4().hex[:8]}"
    failed = _apparel("store", "init", STORE_URL=with_database(pg_admin_url, missing))
    assert failed.returncode == 1
    assert f"cannot connect to the store database '{missing}'" in failed.stdout
    assert not scalar(pg_admin_url, "select exists (select from pg_database where datname = %s)", (missing,))
