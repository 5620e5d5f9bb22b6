"""Tests of the dataset generator: reference data, file layout, invariants and determinism.

The layout tests read the files back with the same kind of readers a user's pipeline uses and check
what DATASET.md promises of the real extracts; the invariant tests check the relationships the
warehouse models rely on (no broken keys, amounts that add up).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from python_calamine import CalamineWorkbook

from apparel import generate as gen
from apparel import reference as ref
from apparel.config import PROJECT_ROOT

SEED_DEPENDENT = (gen.CUSTOMERS_FILE, gen.PRODUCTS_FILE, gen.ORDERS_FILE, gen.ORDER_DETAILS_FILE)
MONTH_STARTS = {f"2022-{m:02d}-01 00:00:00.000" for m in range(1, 13)}


def sha256s(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in gen.FILES}


def read_sheet(path: Path) -> tuple[list[str], list[list[object]]]:
    """Sheet names and the rows of the only sheet, as calamine (the project's Excel reader) sees them."""
    workbook = CalamineWorkbook.from_path(str(path))
    names = list(workbook.sheet_names)
    return names, workbook.get_sheet_by_name(names[0]).to_python()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("dataset")
    return out, gen.generate(out, scale=1, seed=42)


# --- Reference data -------------------------------------------------------------------------------


def test_provinces_reference() -> None:
    assert [p[0] for p in ref.PROVINCES] == list(range(1, 12))
    assert [p[1] for p in ref.PROVINCES] == [
        "BALI",
        "DKI JAKARTA",
        "JAWA BARAT",
        "JAWA TENGAH",
        "JAWA TIMUR",
        "KALIMANTAN SELATAN",
        "KALIMANTAN TENGAH",
        "PAPUA BARAT",
        "SULAWESI UTARA",
        "SUMATERA BARAT",
        "SUMATERA UTARA",
    ]


def test_cities_reference_totals() -> None:
    assert len(ref.CITIES) == 222
    assert [c[0] for c in ref.CITIES] == list(range(1, 223))
    kinds = Counter(name.split(" ", 1)[0] for _, name, _ in ref.CITIES)
    assert kinds == {"KABUPATEN": 169, "KOTA": 53}
    per_province = Counter((pid, name.split(" ", 1)[0]) for _, name, pid in ref.CITIES)
    expected = {
        1: (8, 1),
        2: (1, 5),
        3: (18, 9),
        4: (29, 6),
        5: (29, 9),
        6: (11, 2),
        7: (13, 1),
        8: (12, 1),
        9: (11, 4),
        10: (12, 7),
        11: (25, 8),
    }
    for pid, (kab, kota) in expected.items():
        assert (per_province[(pid, "KABUPATEN")], per_province[(pid, "KOTA")]) == (kab, kota), pid
    names = [name for _, name, _ in ref.CITIES]
    assert len(set(names)) == len(names)
    assert all(name == name.upper() for name in names)
    # Ids follow province order, as the brief asks.
    assert [pid for *_, pid in ref.CITIES] == sorted(pid for *_, pid in ref.CITIES)
    # Pre-2022 Papua Barat still holds what became Papua Barat Daya.
    papua_barat = {name for _, name, pid in ref.CITIES if pid == 8}
    assert {"KABUPATEN SORONG", "KABUPATEN RAJA AMPAT", "KOTA SORONG"} <= papua_barat


def test_name_lists() -> None:
    for names, minimum in ((ref.MALE_FIRST_NAMES, 50), (ref.FEMALE_FIRST_NAMES, 50), (ref.LAST_NAMES, 90)):
        assert len(names) >= minimum
        assert len(set(names)) == len(names)
    assert not set(ref.MALE_FIRST_NAMES) & set(ref.FEMALE_FIRST_NAMES)


def test_catalogue_constants() -> None:
    assert ref.PRODUCT_TYPES == ("Hoodie", "Jeans", "Sweater", "T-shirt")
    assert ref.PRODUCT_COLORS == ("Black", "White", "Blue")
    assert ref.PRODUCT_SIZES == ("M", "L", "XL")
    assert ref.PRODUCT_CATEGORIES == {1: "Mens Fashion", 2: "Womens Fashion"}


# --- Layout ---------------------------------------------------------------------------------------


def test_counts_returned(dataset: tuple[Path, dict[str, int]]) -> None:
    out, counts = dataset
    assert set(counts) == set(gen.FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(gen.FILES)  # no temp files left behind
    assert counts[gen.PROVINCES_FILE] == 11
    assert counts[gen.CITIES_FILE] == 222
    assert counts[gen.CUSTOMERS_FILE] == 200
    assert counts[gen.PRODUCT_CATEGORIES_FILE] == 2
    assert counts[gen.PRODUCTS_FILE] == 43
    assert 200 * 22 <= counts[gen.ORDERS_FILE] <= 200 * 49
    assert 6_000 < counts[gen.ORDERS_FILE] < 8_000  # "about 7,000"
    assert 2.4 < counts[gen.ORDER_DETAILS_FILE] / counts[gen.ORDERS_FILE] < 2.8


def test_xlsx_layout(dataset: tuple[Path, dict[str, int]]) -> None:
    out, _ = dataset
    sheets, rows = read_sheet(out / gen.PROVINCES_FILE)
    assert sheets == ["Sheet1"]
    assert rows[0] == ["province_id", "province_names"]
    assert [(int(r[0]), r[1]) for r in rows[1:]] == list(ref.PROVINCES)

    sheets, rows = read_sheet(out / gen.CITIES_FILE)
    assert sheets == ["Worksheet"]
    assert rows[0] == ["city_id", "city_names", "province_id"]
    assert [(int(r[0]), r[1], int(r[2])) for r in rows[1:]] == list(ref.CITIES)


def test_parquet_layout(dataset: tuple[Path, dict[str, int]]) -> None:
    out, _ = dataset
    path = out / gen.CUSTOMERS_FILE
    schema = pq.read_schema(path)
    assert b"pandas" in (schema.metadata or {})
    pandas_meta = json.loads(schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == []  # index=False
    assert schema.names == ["customer_id", "first_name", "last_name", "gender"]
    assert str(schema.field("customer_id").type) == "int64"

    customers = pd.read_parquet(path)
    assert customers["customer_id"].tolist() == list(range(1, 201))
    assert customers["gender"].value_counts().to_dict() == {"Male": 100, "Female": 100}
    male = customers["gender"] == "Male"
    assert customers.loc[male, "first_name"].isin(ref.MALE_FIRST_NAMES).all()
    assert customers.loc[~male, "first_name"].isin(ref.FEMALE_FIRST_NAMES).all()
    assert customers["last_name"].isin(ref.LAST_NAMES).all()


def test_json_layout(dataset: tuple[Path, dict[str, int]]) -> None:
    out, _ = dataset
    raw = (out / gen.PRODUCT_CATEGORIES_FILE).read_bytes()
    assert raw == (
        b'{"product_category_id":{"0":1,"1":2},'
        b'"product_category_name":{"0":"Mens Fashion","1":"Womens Fashion"}}'
    )

    raw = (out / gen.PRODUCTS_FILE).read_bytes()
    assert not raw.endswith(b"\n")
    assert b" :" not in raw and b": " not in raw  # compact
    doc = json.loads(raw)
    assert list(doc) == ["product_id", "product_name", "size", "price", "product_category_id"]
    for column in doc.values():
        assert list(column) == [str(i) for i in range(43)]  # "columns" orient keyed by row index
    # pandas itself reads it back with its default orient.
    products = pd.read_json(out / gen.PRODUCTS_FILE)
    assert products["product_id"].tolist() == list(range(1, 44))


def test_products(dataset: tuple[Path, dict[str, int]]) -> None:
    out, _ = dataset
    products = pd.read_json(out / gen.PRODUCTS_FILE)
    names = {f"{t} {c}" for t in ref.PRODUCT_TYPES for c in ref.PRODUCT_COLORS}
    assert products["product_name"].isin(names).all()
    assert products["size"].isin(ref.PRODUCT_SIZES).all()
    assert products["product_category_id"].isin([1, 2]).all()
    assert products["price"].between(30_000, 500_000).all()
    assert (products["price"] % 5_000 == 0).all()
    key = ["product_name", "size", "product_category_id"]
    assert not products.duplicated(key).any()
    # At least one name+size under both categories, with different ids and prices.
    twins = products.groupby(["product_name", "size"]).agg(
        cats=("product_category_id", "nunique"), prices=("price", "nunique")
    )
    assert ((twins["cats"] == 2) & (twins["prices"] == 2)).any()


@pytest.mark.parametrize("name", [gen.ORDERS_FILE, gen.ORDER_DETAILS_FILE])
def test_csv_layout(dataset: tuple[Path, dict[str, int]], name: str) -> None:
    out, counts = dataset
    raw = (out / name).read_bytes()
    header = {
        gen.ORDERS_FILE: b"order_id,order_date,customer_id,province_id,city_id\n",
        gen.ORDER_DETAILS_FILE: b"order_detail_id,order_id,product_id,qty,item_price,unit_sales\n",
    }[name]
    assert raw.startswith(header)
    assert raw.count(header.rstrip(b"\n")) == 1
    assert b"\r" not in raw and b'"' not in raw
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == counts[name] + 1


# --- Invariants -----------------------------------------------------------------------------------


def check_invariants(out: Path, n_customers: int) -> None:
    """The relationships DATASET.md states of the real extracts, checked on a generated copy."""
    cities = pd.DataFrame(ref.CITIES, columns=["city_id", "city_names", "province_id"])
    products = pd.read_json(out / gen.PRODUCTS_FILE)
    orders = pd.read_csv(out / gen.ORDERS_FILE, dtype={"order_date": str})
    details = pd.read_csv(out / gen.ORDER_DETAILS_FILE)

    assert orders["order_id"].tolist() == list(range(1, len(orders) + 1))
    assert set(orders["order_date"]) <= MONTH_STARTS
    located = orders.merge(cities, on="city_id", how="left", suffixes=("", "_city"))
    assert (located["province_id"] == located["province_id_city"]).all()  # city belongs to province
    per_customer = orders["customer_id"].value_counts()
    assert sorted(per_customer.index) == list(range(1, n_customers + 1))
    assert per_customer.between(22, 49).all()
    # Within a customer, order ids follow the calendar.
    assert orders.groupby("customer_id")["order_date"].apply(lambda s: s.is_monotonic_increasing).all()

    assert details["order_detail_id"].tolist() == list(range(10_000, 10_000 + len(details)))
    assert details["order_id"].is_monotonic_increasing
    lines = details["order_id"].value_counts()
    assert sorted(lines.index) == orders["order_id"].tolist()  # every order has lines, no orphans
    assert lines.between(1, 6).all()
    assert not details.duplicated(["order_id", "product_id"]).any()
    assert details["qty"].between(1, 9).all()
    priced = details.merge(products[["product_id", "price"]], on="product_id", how="left")
    assert priced["price"].notna().all()
    assert (priced["item_price"] == priced["price"]).all()
    assert (details["unit_sales"] == details["qty"] * details["item_price"]).all()


def test_invariants(dataset: tuple[Path, dict[str, int]]) -> None:
    out, _ = dataset
    check_invariants(out, 200)


def test_months_are_all_of_2022(dataset: tuple[Path, dict[str, int]]) -> None:
    out, _ = dataset
    dates = pd.read_csv(out / gen.ORDERS_FILE, usecols=["order_date"], dtype=str)["order_date"]
    assert set(dates) == MONTH_STARTS


def test_many_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Force several (uneven) chunks: ids must run on and the header must appear once."""
    monkeypatch.setattr(gen, "CHUNK_CUSTOMERS", 70)
    seen: list[tuple[str, int]] = []
    counts = gen.generate(tmp_path, scale=1, seed=7, progress=lambda f, n: seen.append((f, n)))
    check_invariants(tmp_path, 200)
    order_progress = [n for f, n in seen if f == gen.ORDERS_FILE]
    assert len(order_progress) == 3  # 70 + 70 + 60 customers
    assert order_progress == sorted(order_progress)
    assert order_progress[-1] == counts[gen.ORDERS_FILE]
    assert {f for f, _ in seen} == set(gen.FILES)


def test_scale_grows_facts_only(tmp_path: Path, dataset: tuple[Path, dict[str, int]]) -> None:
    small, _ = dataset
    counts = gen.generate(tmp_path, scale=3, seed=42)
    assert counts[gen.CUSTOMERS_FILE] == 600
    assert 600 * 22 <= counts[gen.ORDERS_FILE] <= 600 * 49
    a, b = sha256s(small), sha256s(tmp_path)
    for name in (gen.PROVINCES_FILE, gen.CITIES_FILE, gen.PRODUCT_CATEGORIES_FILE, gen.PRODUCTS_FILE):
        assert a[name] == b[name], name
    check_invariants(tmp_path, 600)


# --- Determinism and robustness --------------------------------------------------------------------


def test_same_seed_same_bytes(tmp_path: Path, dataset: tuple[Path, dict[str, int]]) -> None:
    first, _ = dataset
    gen.generate(tmp_path, scale=1, seed=42)
    assert sha256s(first) == sha256s(tmp_path)


def make_generate_command(scale: int, seed: int) -> list[str]:
    """The command `make generate SCALE=.. SEED=..` runs, as `make -n` prints it (nothing is run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "generate", f"SCALE={scale}", f"SEED={seed}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    commands = [shlex.split(line) for line in dry.stdout.splitlines() if " generate " in f" {line} "]
    assert len(commands) == 1, dry.stdout
    return commands[0]


def test_make_generate_reproduces_the_committed_dataset_byte_for_byte(tmp_path: Path) -> None:
    """`make generate SCALE=1 SEED=42` writes `dataset/` itself; its command is run here with `--out`
    pointing at a temporary folder instead, in another time zone, and every file must be byte for
    byte the committed one (the xlsx files' creation time is pinned by the generator; Parquet and
    the text formats carry no timestamp)."""
    command = make_generate_command(1, 42)
    assert command[-2:] == ["--out", "dataset"], command
    assert Path(command[0]).name == "apparel" and command[1:-2] == [
        "generate",
        "--scale",
        "1",
        "--seed",
        "42",
    ]
    out = tmp_path / "dataset"
    env = {**os.environ, "TZ": "Pacific/Kiritimati"}  # UTC+14: a date written from the clock would show
    subprocess.run(
        [str(Path(sys.executable).parent / "apparel"), *command[1:-1], str(out)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        check=True,
    )
    committed = PROJECT_ROOT / "dataset"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in committed.iterdir())
    differing = [p.name for p in sorted(committed.iterdir()) if p.read_bytes() != (out / p.name).read_bytes()]
    assert differing == [], f"generated files differ from the committed dataset/: {differing}"


def test_other_seed_other_bytes(tmp_path: Path, dataset: tuple[Path, dict[str, int]]) -> None:
    first, _ = dataset
    gen.generate(tmp_path, scale=1, seed=43)
    a, b = sha256s(first), sha256s(tmp_path)
    for name in SEED_DEPENDENT:
        assert a[name] != b[name], name


def test_crash_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_chunks(*args: object, **kwargs: object) -> object:
        raise RuntimeError("disk on fire")
        yield  # pragma: no cover - makes this a generator like the real one

    monkeypatch.setattr(gen, "_fact_chunks", failing_chunks)
    with pytest.raises(RuntimeError, match="disk on fire"):
        gen.generate(tmp_path / "out", scale=1)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(("scale", "seed"), [(0, 1), (1, -1)])
def test_rejects_bad_arguments(tmp_path: Path, scale: int, seed: int) -> None:
    with pytest.raises(ValueError):
        gen.generate(tmp_path, scale=scale, seed=seed)


def test_product_names_match_pattern() -> None:
    products = gen.products_frame(seed=1)
    pattern = re.compile(r"^(Hoodie|Jeans|Sweater|T-shirt) (Black|White|Blue)$")
    assert products["product_name"].map(lambda s: bool(pattern.match(s))).all()
    assert products["product_id"].dtype == np.int64
