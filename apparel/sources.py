"""The registry of the seven source extracts.

Everything that differs between sources lives here, once: file, format, raw
table, columns with their PostgreSQL types, primary key and foreign keys.
Readers, DDL, the ingest DAG's tasks, the dbt sources and the tests are all
derived from it, so a new source is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

RAW_SCHEMA = "raw"
LOAD_LOG_TABLE = "_load_log"


class Format(StrEnum):
    EXCEL = "excel"
    PARQUET = "parquet"
    JSON = "json"
    CSV = "csv"


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    description: str = ""


@dataclass(frozen=True)
class ForeignKey:
    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class Source:
    name: str
    file: str
    format: Format
    columns: tuple[Column, ...]
    primary_key: str
    foreign_keys: tuple[ForeignKey, ...] = ()
    # Excel only: the sheet the real extracts use.
    sheet: str | None = None
    description: str = ""

    @property
    def table(self) -> str:
        return self.name

    @property
    def qualified_table(self) -> str:
        return f"{RAW_SCHEMA}.{self.table}"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def asset_uri(self) -> str:
        """The Airflow asset that stands for this raw table."""
        return f"postgres://warehouse/{RAW_SCHEMA}/{self.table}"


SOURCES: tuple[Source, ...] = (
    Source(
        name="provinces",
        file="provinces.xlsx",
        format=Format.EXCEL,
        sheet="Sheet1",
        description="Indonesian provinces the shop delivers to.",
        columns=(
            Column("province_id", "integer", "Province id."),
            Column("province_names", "text", "Province name, upper case."),
        ),
        primary_key="province_id",
    ),
    Source(
        name="cities",
        file="cities.xlsx",
        format=Format.EXCEL,
        sheet="Worksheet",
        description="Regencies (KABUPATEN) and cities (KOTA) with their province.",
        columns=(
            Column("city_id", "integer", "City id."),
            Column("city_names", "text", "City name, upper case, KABUPATEN <NAME> or KOTA <NAME>."),
            Column("province_id", "integer", "Province the city belongs to."),
        ),
        primary_key="city_id",
        foreign_keys=(ForeignKey("province_id", "provinces", "province_id"),),
    ),
    Source(
        name="customers",
        file="customers.parquet",
        format=Format.PARQUET,
        description="Registered customers of the shop.",
        columns=(
            Column("customer_id", "bigint", "Customer id."),
            Column("first_name", "text", "First name."),
            Column("last_name", "text", "Last name."),
            Column("gender", "text", "Male or Female."),
        ),
        primary_key="customer_id",
    ),
    Source(
        name="product_categories",
        file="product_categories.json",
        format=Format.JSON,
        description="Product categories (Mens Fashion, Womens Fashion).",
        columns=(
            Column("product_category_id", "integer", "Category id."),
            Column("product_category_name", "text", "Category name."),
        ),
        primary_key="product_category_id",
    ),
    Source(
        name="products",
        file="products.json",
        format=Format.JSON,
        description="The product catalogue: one row per product id (name and size repeat across categories).",
        columns=(
            Column("product_id", "integer", "Product id."),
            Column("product_name", "text", "<Type> <Color>, e.g. Hoodie Black."),
            Column("size", "text", "M, L or XL."),
            Column("price", "bigint", "List price in rupiah."),
            Column("product_category_id", "integer", "Category of the product."),
        ),
        primary_key="product_id",
        foreign_keys=(ForeignKey("product_category_id", "product_categories", "product_category_id"),),
    ),
    Source(
        name="orders",
        file="orders.csv",
        format=Format.CSV,
        description="Order headers: who ordered, when and where it was delivered.",
        columns=(
            Column("order_id", "bigint", "Order id."),
            Column("order_date", "timestamp", "Order date and time."),
            Column("customer_id", "bigint", "Ordering customer."),
            Column("province_id", "integer", "Delivery province."),
            Column("city_id", "integer", "Delivery city."),
        ),
        primary_key="order_id",
        foreign_keys=(
            ForeignKey("customer_id", "customers", "customer_id"),
            ForeignKey("province_id", "provinces", "province_id"),
            ForeignKey("city_id", "cities", "city_id"),
        ),
    ),
    Source(
        name="order_details",
        file="order_details.csv",
        format=Format.CSV,
        description="Order lines: product, quantity and price of each line.",
        columns=(
            Column("order_detail_id", "bigint", "Order line id."),
            Column("order_id", "bigint", "Order the line belongs to."),
            Column("product_id", "integer", "Product sold."),
            Column("qty", "integer", "Quantity, 1 to 9."),
            Column("item_price", "bigint", "Unit price in rupiah."),
            Column("unit_sales", "bigint", "Line amount in rupiah (qty x item_price, despite its name)."),
        ),
        primary_key="order_detail_id",
        foreign_keys=(
            ForeignKey("order_id", "orders", "order_id"),
            ForeignKey("product_id", "products", "product_id"),
        ),
    ),
)

SOURCES_BY_NAME: dict[str, Source] = {s.name: s for s in SOURCES}


def get_source(name: str) -> Source:
    try:
        return SOURCES_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(SOURCES_BY_NAME)}") from None
