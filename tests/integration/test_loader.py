"""The loader against a real PostgreSQL: loads, idempotence, and every kind of bad input."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from apparel import merge
from apparel.loader import MERGE_COUNTS, LoadFailed, check_foreign_keys, load_source
from apparel.merge import load_lock_key
from apparel.sources import SOURCES, get_source
from tests.conftest import DATASET_DIR, query, scalar

EXPECTED_ROWS = {
    "provinces": 11,
    "cities": 222,
    "customers": 200,
    "product_categories": 2,
    "products": 43,
    "orders": 7100,
    "order_details": 18258,
}


def table_digest(url: str, table: str) -> str:
    """md5 of the table's extract columns in key order: equal digests mean equal data."""
    source = get_source(table)
    cols = ", ".join(source.column_names)
    return scalar(
        url,
        f"select md5(string_agg(t::text, '|' order by {source.primary_key}))"
        f" from (select {cols} from raw.{table}) t",
    )


def test_loads_all_sources_with_types_keys_and_metadata(loaded_db: str) -> None:
    for name, rows in EXPECTED_ROWS.items():
        assert scalar(loaded_db, f"select count(*) from raw.{name}") == rows
    # Totals that an independent reader of the files computes too.
    details = pd.read_csv(DATASET_DIR / "order_details.csv")
    assert scalar(loaded_db, "select sum(unit_sales) from raw.order_details") == int(
        details["unit_sales"].sum()
    )
    assert scalar(loaded_db, "select pg_typeof(order_date)::text from raw.orders limit 1") == (
        "timestamp without time zone"
    )
    assert scalar(loaded_db, "select min(order_date)::text from raw.orders") == "2022-01-01 00:00:00"
    # Declared primary keys, metadata columns, and row numbers in file order.
    for source in SOURCES:
        key = scalar(
            loaded_db,
            "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid"
            " and a.attnum = any(i.indkey) where i.indrelid = %s::regclass and i.indisprimary",
            (source.qualified_table,),
        )
        assert key == source.primary_key
    assert scalar(loaded_db, "select count(distinct _batch_id) from raw.orders") == 1
    assert scalar(loaded_db, "select _source_file from raw.orders limit 1") == "orders.csv"
    first = pd.read_csv(DATASET_DIR / "orders.csv", nrows=3)["order_id"].tolist()
    assert [
        scalar(loaded_db, "select order_id from raw.orders where _source_row = %s", (i + 1,))
        for i in range(3)
    ] == first
    statuses = scalar(loaded_db, "select array_agg(distinct status) from raw._load_log")
    assert statuses == ["loaded"]
    # A first load inserts every row; each table has its watermark index and its comment.
    assert query(
        loaded_db,
        "select source, rows, inserted, updated, deleted, restored, unchanged from raw._load_log"
        " order by load_id",
    ) == [(name, rows, rows, 0, 0, 0, 0) for name, rows in EXPECTED_ROWS.items()]
    for source in SOURCES:
        assert scalar(loaded_db, "select to_regclass(%s) is not null", (f"raw.{source.table}_loaded_at_idx",))
        assert scalar(loaded_db, "select obj_description(%s::regclass)", (source.qualified_table,)).endswith(
            f"Loaded from {source.file}."
        )


def row_versions(url: str, table: str) -> list[tuple]:
    """Each row's key, `_loaded_at` and xmin (the transaction that last wrote it): equal lists mean
    no row was written."""
    key = get_source(table).primary_key
    return query(url, f"select {key}, _loaded_at, xmin::text from raw.{table} order by {key}")


def test_reload_is_idempotent_and_unchanged_files_are_skipped(loaded_db: str) -> None:
    before = {s.name: table_digest(loaded_db, s.name) for s in SOURCES}
    versions = {s.name: row_versions(loaded_db, s.name) for s in SOURCES}
    for source in SOURCES:
        assert load_source(loaded_db, source, DATASET_DIR).status == "skipped"
        started = time.perf_counter()
        result = load_source(loaded_db, source, DATASET_DIR, force=True)
        print(f"forced reload of {source.file}: {time.perf_counter() - started:.2f} s")
        assert result.status == "loaded"
        counts = (result.inserted, result.updated, result.deleted, result.restored, result.unchanged)
        assert counts == (0, 0, 0, 0, EXPECTED_ROWS[source.name])
    after = {s.name: table_digest(loaded_db, s.name) for s in SOURCES}
    assert before == after
    # A forced reload of the same file writes no row: `_loaded_at` and xmin stay as they were.
    assert {s.name: row_versions(loaded_db, s.name) for s in SOURCES} == versions
    assert scalar(loaded_db, "select count(*) from raw._load_log where status = 'skipped'") == len(SOURCES)
    assert scalar(
        loaded_db,
        "select bool_and(unchanged = rows and inserted + updated + deleted + restored = 0) from raw._load_log"
        " where load_id > %s",
        (len(SOURCES),),
    )


def _rewrite_csv(path: Path, change) -> None:
    """Apply `change` to the data lines of a CSV (a list of field lists) and write it back."""
    header, *lines = path.read_text().splitlines()
    rows = change([line.split(",") for line in lines])
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")


def test_merge_counts_changes_in_the_load_log(
    loaded_db: str, dataset_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = get_source("order_details")
    removed = {"10005", "10100", "12000", "20000", "28257"}
    changed = {"10001", "10002", "10500", "15000", "18000", "25000", "28256"}

    def change(rows: list[list[str]]) -> list[list[str]]:
        kept = [r for r in rows if r[0] not in removed]
        for r in kept:
            if r[0] in changed:
                r[3] = str(int(r[3]) % 9 + 1)  # another quantity, 1 to 9
        return [*kept, *([str(90000 + i), "1", "1", "2", "10", "20"] for i in range(3))]

    _rewrite_csv(dataset_copy / source.file, change)
    first = scalar(loaded_db, "select max(_loaded_at) from raw.order_details")
    first_batch = scalar(loaded_db, "select min(_batch_id::text) from raw.order_details")
    with caplog.at_level("INFO", logger="apparel.loader"):
        result = load_source(loaded_db, source, dataset_copy)

    unchanged = EXPECTED_ROWS["order_details"] - len(removed) - len(changed)
    counts = (result.inserted, result.updated, result.deleted, result.restored, result.unchanged)
    assert counts == (3, 7, 5, 0, unchanged)
    assert query(
        loaded_db,
        "select rows, inserted, updated, deleted, restored, unchanged from raw._load_log"
        " order by load_id desc limit 1",
    ) == [(EXPECTED_ROWS["order_details"] - len(removed) + 3, *counts)]
    line = f"order_details.csv: 3 inserted, 7 updated, 5 deleted, 0 restored, {unchanged:,} unchanged"
    assert line in caplog.text
    # Exactly the written rows moved `_loaded_at`, all to one time; the removed ones stay,
    # soft-deleted at that time, with their values and their last writer's batch.
    moved = query(
        loaded_db,
        "select order_detail_id::text, _deleted_at is not null, _deleted_at = _loaded_at,"
        " _batch_id::text = %s from raw.order_details where _loaded_at > %s order by 1",
        (first_batch, first),
    )
    assert moved == sorted(
        [(k, True, True, True) for k in removed]
        + [(k, False, None, False) for k in changed | {"90000", "90001", "90002"}]
    )
    assert (
        scalar(
            loaded_db,
            "select count(distinct _loaded_at) from raw.order_details where _loaded_at > %s",
            (first,),
        )
        == 1
    )
    original = pd.read_csv(DATASET_DIR / source.file).set_index("order_detail_id")["qty"]
    assert dict(
        query(
            loaded_db,
            "select order_detail_id::text, qty from raw.order_details where _deleted_at is not null",
        )
    ) == {k: int(original[int(k)]) for k in removed}


def _orders_state(url: str, order_id: int) -> tuple:
    return query(
        url, "select customer_id, _deleted_at, _loaded_at from raw.orders where order_id = %s", (order_id,)
    )[0]


def test_a_removed_row_is_soft_deleted_then_restored(loaded_db: str, dataset_copy: Path) -> None:
    orders = get_source("orders")
    path = dataset_copy / orders.file
    others_sql = (
        "select md5(string_agg(_loaded_at::text, ',' order by order_id)) from raw.orders where order_id <> 5"
    )
    others = scalar(loaded_db, others_sql)
    customer, _, first = _orders_state(loaded_db, 5)

    _rewrite_csv(path, lambda rows: [r for r in rows if r[0] != "5"])
    result = load_source(loaded_db, orders, dataset_copy)
    assert (result.deleted, result.unchanged) == (1, EXPECTED_ROWS["orders"] - 1)
    kept_customer, deleted_at, second = _orders_state(loaded_db, 5)
    assert (kept_customer, deleted_at) == (customer, second) and second > first

    # It comes back, with another customer: restored and updated.
    path.write_bytes((DATASET_DIR / orders.file).read_bytes())
    _rewrite_csv(path, lambda rows: [[r[0], r[1], "7" if r[0] == "5" else r[2], *r[3:]] for r in rows])
    result = load_source(loaded_db, orders, dataset_copy)
    counts = (result.inserted, result.updated, result.deleted, result.restored, result.unchanged)
    assert counts == (0, 0, 0, 1, EXPECTED_ROWS["orders"] - 1)
    restored_customer, deleted_at, third = _orders_state(loaded_db, 5)
    assert (restored_customer, deleted_at) == (7, None) and third > second
    assert scalar(loaded_db, others_sql) == others  # no other row was written by either load


def test_views_on_a_raw_table_are_left_alone_and_see_the_new_rows(loaded_db: str, dataset_copy: Path) -> None:
    """Like dbt's staging views: created once, commented, never recreated by a load."""
    with psycopg.connect(loaded_db) as conn:
        conn.execute("create schema staging")
        conn.execute(
            "create view staging.stg_orders as select order_id, customer_id from raw.orders"
            " where _deleted_at is null"
        )
        conn.execute("comment on view staging.stg_orders is 'Orders, one row per order.'")
        conn.execute("create view staging.v_count as select count(*) as n from staging.stg_orders")
    view = "select 'staging.stg_orders'::regclass::oid, obj_description('staging.stg_orders'::regclass)"
    before = query(loaded_db, view)

    _rewrite_csv(dataset_copy / "orders.csv", lambda rows: rows[1:])
    load_source(loaded_db, get_source("orders"), dataset_copy)
    assert query(loaded_db, view) == before
    assert scalar(loaded_db, "select n from staging.v_count") == EXPECTED_ROWS["orders"] - 1


def test_loads_of_one_table_wait_for_each_other(loaded_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    orders = get_source("orders")
    before = table_digest(loaded_db, "orders")
    monkeypatch.setattr(merge, "LOAD_LOCK_TIMEOUT_SECONDS", 0.2)
    waiting = (
        "select count(*) from pg_locks where locktype = 'advisory' and not granted"
        " and database = (select oid from pg_database where datname = current_database())"
    )
    results = []
    with psycopg.connect(loaded_db) as holder:  # stands for a load of raw.orders still running
        holder.execute("select pg_advisory_xact_lock(%s)", (load_lock_key(orders),))
        with pytest.raises(LoadFailed) as failure:
            load_source(loaded_db, orders, DATASET_DIR, force=True)
        message = str(failure.value)
        assert message.startswith("raw.orders: another load of this table is running;"), message
        assert scalar(loaded_db, "select error from raw._load_log order by load_id desc limit 1") == message
        # Another table loads meanwhile.
        assert load_source(loaded_db, get_source("customers"), DATASET_DIR, force=True).status == "loaded"

        # Given time, a load waits for the lock and goes on once it is released.
        monkeypatch.setattr(merge, "LOAD_LOCK_TIMEOUT_SECONDS", 60)
        waiter = threading.Thread(
            target=lambda: results.append(load_source(loaded_db, orders, DATASET_DIR, force=True))
        )
        waiter.start()
        deadline = time.monotonic() + 30
        while not scalar(loaded_db, waiting) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scalar(loaded_db, waiting) == 1
        assert not results
    waiter.join(timeout=60)
    assert results[0].status == "loaded" and results[0].unchanged == EXPECTED_ROWS["orders"]
    assert table_digest(loaded_db, "orders") == before


def test_a_table_of_the_old_loader_is_upgraded_by_its_next_load(loaded_db: str) -> None:
    """The previous loader made no `_deleted_at`, no `_loaded_at` index and no counts in the log."""
    with psycopg.connect(loaded_db) as conn:
        conn.execute("alter table raw.orders drop column _deleted_at")
        conn.execute("drop index raw.orders_loaded_at_idx")
        conn.execute("alter table raw._load_log " + ", ".join(f"drop column {c}" for c in MERGE_COUNTS))
    versions = row_versions(loaded_db, "orders")
    # Its file is unchanged, but the table needs the upgrade: loaded (not skipped), no row written.
    result = load_source(loaded_db, get_source("orders"), DATASET_DIR)
    assert (result.status, result.unchanged) == ("loaded", EXPECTED_ROWS["orders"])
    assert row_versions(loaded_db, "orders") == versions
    live = scalar(loaded_db, "select count(*) from raw.orders where _deleted_at is null")
    assert live == EXPECTED_ROWS["orders"]
    assert scalar(loaded_db, "select to_regclass('raw.orders_loaded_at_idx') is not null")
    logged = scalar(loaded_db, "select unchanged from raw._load_log order by load_id desc limit 1")
    assert logged == EXPECTED_ROWS["orders"]
    assert load_source(loaded_db, get_source("orders"), DATASET_DIR).status == "skipped"


def break_file(folder: Path, source_name: str, how: str) -> None:
    source = get_source(source_name)
    path = folder / source.file
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "text":
        path.write_text("this is not a spreadsheet\n")
    else:
        raise ValueError(how)


def replace_line(path: Path, line_no: int, new: str) -> None:
    lines = path.read_text().split("\n")
    lines[line_no - 1] = new
    path.write_text("\n".join(lines))


def csv_line(path: Path, line_no: int) -> list[str]:
    return path.read_text().split("\n")[line_no - 1].split(",")


def _set_field(path: Path, line_no: int, column: int, value: str) -> None:
    fields = csv_line(path, line_no)
    fields[column] = value
    replace_line(path, line_no, ",".join(fields))


def cut_mid_line(path: Path, line_no: int) -> None:
    """The file as a copy still in progress leaves it: complete up to line_no - 1, then part of line_no."""
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[: line_no - 1]) + b"\n" + lines[line_no - 1][:9])


BAD_INPUTS = [
    # (source, how to break it, text that the error must contain)
    ("orders", lambda d: break_file(d, "orders", "missing"), ["orders.csv", "file not found"]),
    ("orders", lambda d: break_file(d, "orders", "empty"), ["orders.csv", "empty"]),
    ("customers", lambda d: break_file(d, "customers", "truncated"), ["customers.parquet", "Parquet"]),
    ("cities", lambda d: break_file(d, "cities", "text"), ["cities.xlsx", "not a readable Excel workbook"]),
    (
        "products",
        lambda d: (d / "products.json").write_text('{"product_id":{"0":1'),
        ["products.json", "invalid JSON at line 1"],
    ),
    (
        "order_details",
        lambda d: replace_line(d / "order_details.csv", 40, "10038,15,3"),
        ["order_details.csv", "line 40", "missing data for column"],
    ),
    (
        "order_details",
        lambda d: _set_field(d / "order_details.csv", 7, 3, "abc"),
        ["order_details.csv", "line 7", "column qty", '"abc"'],
    ),
    (
        "orders",
        lambda d: _set_field(d / "orders.csv", 12, 1, "2022-13-45 00:00:00.000"),
        ["orders.csv", "line 12", "column order_date", "2022-13-45"],
    ),
    (
        "orders",
        lambda d: _set_field(d / "orders.csv", 9, 0, csv_line(d / "orders.csv", 4)[0]),
        ["orders.csv", "line 4", "column order_id", "duplicate primary key order_id=3", "line 9"],
    ),
    (
        "orders",
        lambda d: replace_line(d / "orders.csv", 1, "order_id,order_date,customer,province_id,city_id"),
        ["orders.csv", "missing column(s): customer_id", "unexpected column(s): customer"],
    ),
    (
        "orders",
        lambda d: (d / "orders.csv").write_text("order_id,order_date,customer_id,province_id,city_id\n"),
        ["orders.csv", "no data rows"],
    ),
    (
        "order_details",
        lambda d: cut_mid_line(d / "order_details.csv", 5000),
        ["order_details.csv, line 5000:", "ends in the middle of this line", "incomplete"],
    ),
    (
        "products",
        lambda d: _json_set(d / "products.json", "price", "5", "a lot"),
        ["products.json", 'row key "5"', "column price", '"a lot"'],
    ),
    (
        "provinces",
        lambda d: _excel_rewrite(
            d / "provinces.xlsx", "Sheet1", lambda df: df.rename(columns={"province_names": "name"})
        ),
        ["provinces.xlsx", "missing column(s): province_names"],
    ),
    (
        "cities",
        lambda d: _excel_rewrite(
            d / "cities.xlsx",
            "Worksheet",
            lambda df: df.assign(city_id=df["city_id"].where(df.index != 4, 1)),
        ),
        ["cities.xlsx", "duplicate primary key city_id=1", "row 2", "column city_id"],
    ),
]


def _json_set(path: Path, column: str, key: str, value) -> None:
    data = json.loads(path.read_text())
    data[column][key] = value
    path.write_text(json.dumps(data, separators=(",", ":")))


def _excel_rewrite(path: Path, sheet: str, change) -> None:
    df = change(pd.read_excel(path, sheet_name=sheet, engine="calamine"))
    df.to_excel(path, sheet_name=sheet, index=False)


@pytest.mark.parametrize(("source_name", "damage", "expected"), BAD_INPUTS)
def test_bad_input_fails_clearly_and_keeps_the_previous_table(
    loaded_db: str, dataset_copy: Path, source_name: str, damage, expected: list[str]
) -> None:
    source = get_source(source_name)
    before = table_digest(loaded_db, source_name)
    damage(dataset_copy)

    with pytest.raises(LoadFailed) as failure:
        load_source(loaded_db, source, dataset_copy, force=True)

    message = str(failure.value)
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert "\n" not in message.strip()
    assert table_digest(loaded_db, source_name) == before
    assert scalar(loaded_db, "select count(*) from pg_tables where tablename like '\\_loading\\_%'") == 0
    logged = scalar(
        loaded_db,
        "select error from raw._load_log where source = %s order by load_id desc limit 1",
        (source_name,),
    )
    assert logged == message
    # The other sources still load from the same folder.
    for other in SOURCES:
        if other.name != source_name:
            assert load_source(loaded_db, other, dataset_copy, force=True).status == "loaded"


def test_first_load_of_a_bad_file_creates_nothing(fresh_db: str, dataset_copy: Path) -> None:
    _set_field(dataset_copy / "orders.csv", 3, 2, "x")
    with pytest.raises(LoadFailed, match="line 3, column customer_id"):
        load_source(fresh_db, get_source("orders"), dataset_copy)
    assert scalar(fresh_db, "select to_regclass('raw.orders') is null")
    assert scalar(fresh_db, "select status from raw._load_log") == "failed"


def test_unknown_extra_columns_are_ignored_with_a_warning(fresh_db: str, dataset_copy: Path) -> None:
    orders = pd.read_csv(dataset_copy / "orders.csv", dtype=str)
    orders.insert(2, "coupon", "X1")
    orders.to_csv(dataset_copy / "orders.csv", index=False)
    customers = pd.read_parquet(dataset_copy / "customers.parquet")
    customers["email"] = "a@example.com"
    customers.to_parquet(dataset_copy / "customers.parquet", index=False)

    warnings = {}
    for name in ("orders", "customers"):
        result = load_source(fresh_db, get_source(name), dataset_copy)
        assert result.status == "loaded"
        assert result.warnings and "ignored unknown column" in result.warnings[0]
        warnings[name] = result.warnings
    columns = scalar(
        fresh_db,
        "select array_agg(column_name::text order by ordinal_position) from information_schema.columns"
        " where table_schema = 'raw' and table_name = 'orders'",
    )
    assert columns == [
        *get_source("orders").column_names,
        "_source_row",
        "_loaded_at",
        "_source_file",
        "_batch_id",
        "_deleted_at",
    ]
    assert scalar(fresh_db, "select count(*) from raw.orders") == EXPECTED_ROWS["orders"]
    assert "ignored unknown column(s) not in the registry: coupon" in scalar(
        fresh_db, "select warnings from raw._load_log where source = 'orders'"
    )
    # A later load merges through a staging table: the extra column is ignored there too.
    result = load_source(fresh_db, get_source("orders"), dataset_copy, force=True)
    assert (result.unchanged, result.warnings) == (EXPECTED_ROWS["orders"], warnings["orders"])


def test_orphan_foreign_keys_are_reported_not_dropped(loaded_db: str, dataset_copy: Path) -> None:
    _set_field(dataset_copy / "order_details.csv", 2, 2, "999")
    load_source(loaded_db, get_source("order_details"), dataset_copy, force=True)
    orphans = check_foreign_keys(loaded_db)
    assert [(o.source, o.column, o.parent, o.count, o.examples) for o in orphans] == [
        ("order_details", "product_id", "products", 1, ["999"])
    ]
    assert scalar(loaded_db, "select count(*) from raw.order_details") == EXPECTED_ROWS["order_details"]
    assert "product_id not in raw.products" in scalar(
        loaded_db,
        "select warnings from raw._load_log where source = 'order_details' order by load_id desc limit 1",
    )


def test_changed_sources_are_the_files_a_load_would_not_skip(loaded_db: str, dataset_copy: Path) -> None:
    from apparel.loader import changed_sources

    assert changed_sources(loaded_db, dataset_copy) == []
    _set_field(dataset_copy / "orders.csv", 2, 2, "2")
    (dataset_copy / "products.json").unlink()
    assert changed_sources(loaded_db, dataset_copy) == ["orders"]
    load_source(loaded_db, get_source("orders"), dataset_copy)
    assert changed_sources(loaded_db, dataset_copy) == []
