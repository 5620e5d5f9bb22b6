"""Deterministic generator of the seven Django Apparel source extracts.

The files it writes have the layout of the real extracts (``DATASET.md``): same formats, sheet names,
headers, JSON orient, CSV dialect and column types, so every reader in the project is exercised on
the generated copy exactly as on a real drop. Output is byte-for-byte reproducible for a given
``(scale, seed)``, which is what lets the repository commit ``dataset/`` and tests compare hashes.

The two fact extracts (``orders.csv``, ``order_details.csv``) are produced in chunks of customers
and streamed to disk, so ``scale=1000`` (about 7M orders and 18M lines) runs in bounded memory.
Reference tables (provinces, cities, categories, products) never change with the scale.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import xlsxwriter

from apparel import reference as ref

log = logging.getLogger(__name__)

PROVINCES_FILE = "provinces.xlsx"
CITIES_FILE = "cities.xlsx"
CUSTOMERS_FILE = "customers.parquet"
PRODUCT_CATEGORIES_FILE = "product_categories.json"
PRODUCTS_FILE = "products.json"
ORDERS_FILE = "orders.csv"
ORDER_DETAILS_FILE = "order_details.csv"

#: Every file ``generate`` writes, in the order it writes them.
FILES: tuple[str, ...] = (
    PROVINCES_FILE,
    CITIES_FILE,
    CUSTOMERS_FILE,
    PRODUCT_CATEGORIES_FILE,
    PRODUCTS_FILE,
    ORDERS_FILE,
    ORDER_DETAILS_FILE,
)

CUSTOMERS_PER_SCALE = 200
ORDERS_PER_CUSTOMER_MIN = 22
ORDERS_PER_CUSTOMER_MAX = 49
# Probabilities of 1..6 lines per order; mean 2.58, as in the real extract (18,322 lines / 7,000).
LINES_PER_ORDER_WEIGHTS: tuple[float, ...] = (0.28, 0.27, 0.20, 0.13, 0.08, 0.04)
QTY_MIN = 1
QTY_MAX = 9
FIRST_ORDER_DETAIL_ID = 10_000
ORDER_YEAR = 2022

#: Customers per streamed chunk. Big enough for numpy to amortise per-call overhead, small enough
#: that one chunk (~180k orders, ~460k lines) stays a few tens of MB.
CHUNK_CUSTOMERS = 5_000

# xlsx files embed a creation timestamp; pinning it is what makes them reproducible.
XLSX_CREATED = datetime(2023, 1, 1, 0, 0, 0)

ORDERS_COLUMNS: tuple[str, ...] = ("order_id", "order_date", "customer_id", "province_id", "city_id")
ORDER_DETAILS_COLUMNS: tuple[str, ...] = (
    "order_detail_id",
    "order_id",
    "product_id",
    "qty",
    "item_price",
    "unit_sales",
)

# Independent random streams per table, so that e.g. the product catalogue is the same whatever the
# scale, and a chunk's content depends only on (seed, chunk index), not on what came before it.
_STREAM_PRODUCTS = 1
_STREAM_CUSTOMERS = 2
_STREAM_ORDERS = 3

# Price multipliers: bigger sizes cost a little more, womenswear is priced slightly differently, so
# the same name+size in both categories gets a different price.
_SIZE_FACTOR: dict[str, float] = {"M": 1.0, "L": 1.05, "XL": 1.12}
_CATEGORY_FACTOR: dict[int, float] = {1: 1.0, 2: 1.06}

# Every order_date is the first of a month at midnight, in the real extract's text format.
_MONTH_DATES: pa.Array = pa.array([f"{ORDER_YEAR}-{m:02d}-01 00:00:00.000" for m in range(1, 13)])

Progress = Callable[[str, int], None]


def _rng(seed: int, *key: int) -> np.random.Generator:
    """A PCG64 generator for one named stream (and chunk) derived from the user's seed."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


# --- Reference tables ------------------------------------------------------------------------------


def provinces_frame() -> pd.DataFrame:
    """The provinces extract, ids 1..11."""
    return pd.DataFrame(ref.PROVINCES, columns=["province_id", "province_names"])


def cities_frame() -> pd.DataFrame:
    """The cities extract, ids 1..222."""
    return pd.DataFrame(ref.CITIES, columns=["city_id", "city_names", "province_id"])


def product_categories_frame() -> pd.DataFrame:
    """The two product categories."""
    items = sorted(ref.PRODUCT_CATEGORIES.items())
    return pd.DataFrame(items, columns=["product_category_id", "product_category_name"])


def products_frame(seed: int) -> pd.DataFrame:
    """Draw the fixed-size product catalogue from type x color x size x category.

    One (type, color, size) is forced into both categories first: the real extract has such twins
    (same name and size, different id and price) and downstream models must not key on the name.
    The rest are drawn without replacement, so more twins usually appear by chance.
    """
    rng = _rng(seed, _STREAM_PRODUCTS)
    variants = list(itertools.product(ref.PRODUCT_TYPES, ref.PRODUCT_COLORS, ref.PRODUCT_SIZES))
    categories = sorted(ref.PRODUCT_CATEGORIES)
    twin = variants[int(rng.integers(len(variants)))]
    rest = [(c, *v) for c in categories for v in variants if v != twin]
    n_rest = ref.PRODUCT_COUNT - len(categories)
    picked = [rest[i] for i in sorted(rng.choice(len(rest), size=n_rest, replace=False))]
    chosen = [(c, *twin) for c in categories] + picked

    # Stable, readable id order: category, then type, color, size in catalogue order.
    def sort_key(p: tuple[int, str, str, str]) -> tuple[int, int, int, int]:
        cat, typ, color, size = p
        return (
            cat,
            ref.PRODUCT_TYPES.index(typ),
            ref.PRODUCT_COLORS.index(color),
            ref.PRODUCT_SIZES.index(size),
        )

    chosen.sort(key=sort_key)
    noise = rng.uniform(0.8, 1.25, size=len(chosen))
    prices: list[int] = []
    for (cat, typ, _color, size), n in zip(chosen, noise, strict=True):
        raw = ref.BASE_PRICE[typ] * _SIZE_FACTOR[size] * _CATEGORY_FACTOR[cat] * n
        prices.append(_round_price(raw))

    # The forced twin must differ in price, not only in id; nudge the later one if rounding met.
    twin_idx = [i for i, p in enumerate(chosen) if p[1:] == twin]
    a, b = twin_idx
    if prices[a] == prices[b]:
        prices[b] += ref.PRICE_STEP if prices[b] < ref.PRICE_MAX else -ref.PRICE_STEP

    return pd.DataFrame(
        {
            "product_id": np.arange(1, len(chosen) + 1, dtype=np.int64),
            "product_name": [f"{typ} {color}" for _c, typ, color, _s in chosen],
            "size": [size for *_, size in chosen],
            "price": np.array(prices, dtype=np.int64),
            "product_category_id": np.array([c for c, *_ in chosen], dtype=np.int64),
        }
    )


def _round_price(raw: float) -> int:
    """Round to the shop's 5,000-rupiah price points, within the real extract's range."""
    stepped = round(float(raw) / ref.PRICE_STEP) * ref.PRICE_STEP
    return min(max(stepped, ref.PRICE_MIN), ref.PRICE_MAX)


def customers_frame(n: int, seed: int) -> pd.DataFrame:
    """``n`` customers (``n`` even), exactly half Male and half Female, in random order.

    Built in one piece: even at scale 1000 it is only 200k rows, and pandas must write the parquet
    (the real file carries pandas metadata).
    """
    if n % 2:
        raise ValueError(f"customer count must be even to split genders exactly, got {n}")
    rng = _rng(seed, _STREAM_CUSTOMERS)
    is_male = rng.permutation(np.arange(n) < n // 2)
    male = np.array(ref.MALE_FIRST_NAMES, dtype=object)[rng.integers(len(ref.MALE_FIRST_NAMES), size=n)]
    female = np.array(ref.FEMALE_FIRST_NAMES, dtype=object)[rng.integers(len(ref.FEMALE_FIRST_NAMES), size=n)]
    last = np.array(ref.LAST_NAMES, dtype=object)[rng.integers(len(ref.LAST_NAMES), size=n)]
    # object dtype (not pandas 3's default "str") so the parquet holds plain `string` columns with
    # pandas_type "unicode", as files written by the pandas 1.x/2.x that made the real extract do.
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "first_name": pd.Series(np.where(is_male, male, female), dtype=object),
            "last_name": pd.Series(last, dtype=object),
            "gender": pd.Series(np.where(is_male, "Male", "Female").astype(object), dtype=object),
        }
    )


# --- Fact tables, streamed ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    orders: pa.Table
    details: pa.Table


def _fact_chunks(n_customers: int, seed: int, prices: np.ndarray) -> Iterator[_Chunk]:
    """Yield orders and their lines for successive blocks of ``CHUNK_CUSTOMERS`` customers.

    Ids continue across chunks; each chunk has its own random stream keyed by its index, so the
    output is reproducible without replaying earlier chunks.
    """
    city_ids = np.array([c[0] for c in ref.CITIES], dtype=np.int64)
    city_provinces = np.array([c[2] for c in ref.CITIES], dtype=np.int64)
    n_products = len(prices)
    # Steps coprime with the catalogue size make start + k*step (mod n) hit k distinct products,
    # so an order never lists the same product twice, without a per-order Python loop.
    steps = np.array([s for s in range(1, n_products) if math.gcd(s, n_products) == 1], dtype=np.int64)
    weights = np.array(LINES_PER_ORDER_WEIGHTS) / sum(LINES_PER_ORDER_WEIGHTS)
    if len(weights) >= n_products:
        raise ValueError("more lines per order than products: lines could not be distinct")

    next_order_id = 1
    next_detail_id = FIRST_ORDER_DETAIL_ID
    for chunk_index, first in enumerate(range(0, n_customers, CHUNK_CUSTOMERS)):
        rng = _rng(seed, _STREAM_ORDERS, chunk_index)
        n_cust = min(CHUNK_CUSTOMERS, n_customers - first)

        per_customer = rng.integers(ORDERS_PER_CUSTOMER_MIN, ORDERS_PER_CUSTOMER_MAX + 1, size=n_cust)
        n_orders = int(per_customer.sum())
        local_customer = np.repeat(np.arange(n_cust, dtype=np.int64), per_customer)
        # Sort months within each customer so a customer's order ids follow the calendar.
        month = np.sort(local_customer * 12 + rng.integers(0, 12, size=n_orders)) % 12
        city_idx = rng.integers(0, len(city_ids), size=n_orders)
        order_id = np.arange(next_order_id, next_order_id + n_orders, dtype=np.int64)

        n_lines = rng.choice(len(weights), size=n_orders, p=weights) + 1
        n_details = int(n_lines.sum())
        line_order = np.repeat(order_id, n_lines)
        line_pos = np.arange(n_details, dtype=np.int64) - np.repeat(np.cumsum(n_lines) - n_lines, n_lines)
        start = np.repeat(rng.integers(0, n_products, size=n_orders), n_lines)
        step = np.repeat(steps[rng.integers(0, len(steps), size=n_orders)], n_lines)
        product_idx = (start + line_pos * step) % n_products
        qty = rng.integers(QTY_MIN, QTY_MAX + 1, size=n_details, dtype=np.int64)
        item_price = prices[product_idx]

        orders = pa.table(
            {
                "order_id": order_id,
                "order_date": _MONTH_DATES.take(pa.array(month)),
                "customer_id": local_customer + (first + 1),
                "province_id": city_provinces[city_idx],
                "city_id": city_ids[city_idx],
            }
        )
        details = pa.table(
            {
                "order_detail_id": np.arange(next_detail_id, next_detail_id + n_details, dtype=np.int64),
                "order_id": line_order,
                "product_id": product_idx + 1,
                "qty": qty,
                "item_price": item_price,
                "unit_sales": qty * item_price,
            }
        )
        next_order_id += n_orders
        next_detail_id += n_details
        yield _Chunk(orders, details)


class _CsvSink:
    """A CSV file written chunk by chunk: unquoted header once, then pyarrow's fast writer.

    pyarrow would quote header names and string values; the real extracts quote nothing, and none
    of our values contain a comma, quote or newline, so quoting is switched off.
    """

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self._columns = columns
        self._file = pa.OSFile(str(path), "wb")
        self._file.write((",".join(columns) + "\n").encode())
        self._writer: pacsv.CSVWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if tuple(table.column_names) != self._columns:
            raise ValueError(f"columns {table.column_names} != {self._columns}")
        if self._writer is None:
            options = pacsv.WriteOptions(include_header=False, quoting_style="none")
            self._writer = pacsv.CSVWriter(self._file, table.schema, write_options=options)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._file.close()


# --- Writers for the small files -------------------------------------------------------------------


def _write_xlsx(path: Path, frame: pd.DataFrame, sheet: str) -> None:
    """Plain sheet, header in row 1, no styling; in_memory plus a fixed 'created' makes it stable.

    (in_memory also pins the zip entries' timestamps, which the tempfile mode takes from disk.)
    """
    workbook = xlsxwriter.Workbook(str(path), {"in_memory": True})
    try:
        workbook.set_properties({"created": XLSX_CREATED})
        worksheet = workbook.add_worksheet(sheet)
        worksheet.write_row(0, 0, list(frame.columns))
        for r, row in enumerate(frame.itertuples(index=False), start=1):
            worksheet.write_row(r, 0, [v.item() if isinstance(v, np.generic) else v for v in row])
    finally:
        workbook.close()


def _write_json(path: Path, frame: pd.DataFrame) -> None:
    """pandas' default orient ("columns"), compact, no trailing newline: as the real extracts."""
    path.write_bytes(frame.to_json().encode("utf-8"))


# --- Entry point ---------------------------------------------------------------------------------


def generate(
    out_dir: Path,
    scale: int = 1,
    seed: int = 42,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Write the seven extracts into ``out_dir`` and return the rows written per file name.

    ``scale`` multiplies the customers (200 per unit) and so the orders and lines; the reference
    tables stay fixed. The same ``(scale, seed)`` always gives byte-identical files. Files are
    written under temporary names and renamed together at the end, so an interrupted run leaves no
    half-written extract behind (earlier extracts in ``out_dir``, if any, stay untouched).
    ``progress(file_name, rows_so_far)`` is called after every written chunk.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("generating extracts into %s (scale=%d, seed=%d)", out_dir, scale, seed)

    temps = {name: out_dir / f"{name}.tmp" for name in FILES}
    counts: dict[str, int] = {}

    def report(name: str, rows: int) -> None:
        counts[name] = rows
        if progress is not None:
            progress(name, rows)

    try:
        provinces = provinces_frame()
        _write_xlsx(temps[PROVINCES_FILE], provinces, "Sheet1")
        report(PROVINCES_FILE, len(provinces))

        cities = cities_frame()
        _write_xlsx(temps[CITIES_FILE], cities, "Worksheet")
        report(CITIES_FILE, len(cities))

        n_customers = CUSTOMERS_PER_SCALE * scale
        customers = customers_frame(n_customers, seed)
        customers.to_parquet(temps[CUSTOMERS_FILE], index=False)
        report(CUSTOMERS_FILE, len(customers))
        del customers

        categories = product_categories_frame()
        _write_json(temps[PRODUCT_CATEGORIES_FILE], categories)
        report(PRODUCT_CATEGORIES_FILE, len(categories))

        products = products_frame(seed)
        _write_json(temps[PRODUCTS_FILE], products)
        report(PRODUCTS_FILE, len(products))

        orders_sink = _CsvSink(temps[ORDERS_FILE], ORDERS_COLUMNS)
        details_sink = _CsvSink(temps[ORDER_DETAILS_FILE], ORDER_DETAILS_COLUMNS)
        try:
            prices = products["price"].to_numpy(dtype=np.int64)
            for chunk in _fact_chunks(n_customers, seed, prices):
                orders_sink.write(chunk.orders)
                details_sink.write(chunk.details)
                report(ORDERS_FILE, orders_sink.rows)
                report(ORDER_DETAILS_FILE, details_sink.rows)
        finally:
            orders_sink.close()
            details_sink.close()

        for name in FILES:
            os.replace(temps[name], out_dir / name)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise

    log.info(
        "wrote %s in %.1f s",
        ", ".join(f"{name}={rows}" for name, rows in counts.items()),
        time.perf_counter() - started,
    )
    return counts
