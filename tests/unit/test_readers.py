"""Each reader turns its format into CSV rows for COPY, and `row_label(n)` sends a person to where the
n-th of those rows sits in the original file: what a load error quotes (a CSV line, a sheet's own row
number, a Parquet row, a JSON row key)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xlsxwriter

from apparel.readers import SourceError, open_extract
from apparel.sources import SOURCES_BY_NAME


def rows_of(extract) -> list[str]:
    return b"".join(extract.chunks).decode().splitlines()


def test_csv_rows_are_labelled_by_the_files_own_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,order_date,customer_id,province_id,city_id\n1,2024-01-01,1,1,1\n2,bad,1,1,1\n")
    extract = open_extract(SOURCES_BY_NAME["orders"], path)
    assert rows_of(extract)[1].startswith("2,bad")
    assert extract.row_label(2) == "line 3"


def test_excel_rows_are_labelled_by_the_sheets_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "provinces.xlsx"
    with xlsxwriter.Workbook(path) as workbook:
        sheet = workbook.add_worksheet("Sheet1")
        # The table starts at B3, as in a hand-made sheet with a title above it.
        sheet.write_row(2, 1, ["province_id", "province_names"])
        sheet.write_row(3, 1, [1, "Aceh"])
        sheet.write_row(4, 1, [2.0, "Bali"])
    extract = open_extract(SOURCES_BY_NAME["provinces"], path)
    assert extract.columns == ["province_id", "province_names"]
    # Spreadsheets store numbers as floats: a whole number reaches COPY as an integer.
    assert rows_of(extract) == ["1,Aceh", "2,Bali"]
    assert extract.row_label(2) == "row 5"


def test_parquet_rows_are_numbered_and_unknown_columns_are_not_read(tmp_path: Path) -> None:
    path = tmp_path / "customers.parquet"
    table = pa.table(
        {
            "customer_id": [1, 2],
            "first_name": ["Ayu", "Budi"],
            "last_name": ["S", "T"],
            "gender": ["Female", "Male"],
            "loyalty": [3, 4],
        }
    )
    pq.write_table(table, path)
    extract = open_extract(SOURCES_BY_NAME["customers"], path)
    assert extract.unread_columns == ["loyalty"]
    assert rows_of(extract)[1] == '2,"Budi","T","Male"'
    assert extract.row_label(2) == "row 2"


def test_json_rows_are_labelled_by_their_keys_in_numeric_order(tmp_path: Path) -> None:
    path = tmp_path / "product_categories.json"
    keys = ["10", "2", "1"]
    path.write_text(
        json.dumps(
            {
                "product_category_id": {k: int(k) for k in keys},
                "product_category_name": {k: f"category {k}" for k in keys},
            }
        )
    )
    extract = open_extract(SOURCES_BY_NAME["product_categories"], path)
    assert rows_of(extract) == ["1,category 1", "2,category 2", "10,category 10"]
    assert extract.row_label(3) == 'row key "10"'


def test_a_json_value_missing_names_its_row_key_and_column(tmp_path: Path) -> None:
    path = tmp_path / "product_categories.json"
    columns = {"product_category_id": {"0": 1, "1": 2}, "product_category_name": {"0": "a"}}
    path.write_text(json.dumps(columns))
    with pytest.raises(SourceError) as error:
        open_extract(SOURCES_BY_NAME["product_categories"], path)
    assert str(error.value) == (
        'product_categories.json, row key "1", column product_category_name: value missing'
    )
