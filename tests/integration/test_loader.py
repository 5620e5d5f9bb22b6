"""The loader against a real PostgreSQL: loads, idempotence, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from apparel.loader import LoadFailed, check_foreign_keys, load_source
from apparel.sources import SOURCES, get_source
from tests.conftest import DATASET_DIR, scalar

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


def test_reload_is_idempotent_and_unchanged_files_are_skipped(loaded_db: str) -> None:
    before = {s.name: table_digest(loaded_db, s.name) for s in SOURCES}
    for source in SOURCES:
        assert load_source(loaded_db, source, DATASET_DIR).status == "skipped"
        assert load_source(loaded_db, source, DATASET_DIR, force=True).status == "loaded"
    after = {s.name: table_digest(loaded_db, s.name) for s in SOURCES}
    assert before == after
    assert scalar(loaded_db, "select count(*) from raw._load_log where status = 'skipped'") == len(SOURCES)


def test_dependent_views_survive_a_reload(loaded_db: str) -> None:
    with psycopg.connect(loaded_db) as conn:
        conn.execute("create schema staging")
        conn.execute("create view staging.v_orders as select order_id, customer_id from raw.orders")
        conn.execute("create view staging.v_count as select count(*) as n from staging.v_orders")
    load_source(loaded_db, get_source("orders"), DATASET_DIR, force=True)
    assert scalar(loaded_db, "select n from staging.v_count") == EXPECTED_ROWS["orders"]


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

    for name in ("orders", "customers"):
        result = load_source(fresh_db, get_source(name), dataset_copy)
        assert result.status == "loaded"
        assert result.warnings and "ignored unknown column" in result.warnings[0]
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
    ]
    assert scalar(fresh_db, "select count(*) from raw.orders") == EXPECTED_ROWS["orders"]
    assert "ignored unknown column(s) not in the registry: coupon" in scalar(
        fresh_db, "select warnings from raw._load_log where source = 'orders'"
    )


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
