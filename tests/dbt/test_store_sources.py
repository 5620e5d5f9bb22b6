"""The dbt sources of the shop's mirror agree with its registry (apparel/store.py). No database."""

from __future__ import annotations

import yaml

from apparel.dbt_runner import DBT_PROJECT_DIR
from apparel.store import MIRROR_COLUMNS, MIRROR_SCHEMA, MIRROR_TABLES, STORE_TABLES

SOURCES_YML = DBT_PROJECT_DIR / "models" / "staging" / "_raw_store__sources.yml"


def test_dbt_sources_list_every_store_table_and_mirror_column() -> None:
    (store,) = yaml.safe_load(SOURCES_YML.read_text())["sources"]
    assert store["schema"] == MIRROR_SCHEMA
    assert store["config"]["loaded_at_field"] == "_synced_at"
    assert "_synced_at" in [c.name for c in MIRROR_COLUMNS]
    tables = {t["name"]: t for t in store["tables"]}
    assert list(tables) == [t.name for t in STORE_TABLES], "one dbt source table per store table, same order"
    for table in STORE_TABLES:
        columns = tables[table.name]["columns"]
        assert [c["name"] for c in columns] == [*table.column_names, *(c.name for c in MIRROR_COLUMNS)], (
            f"{table.name}: columns differ from the registry"
        )
        assert all(c.get("description") for c in columns), f"{table.name}: a column has no description"


def test_freshness_warns_before_it_errors_on_the_order_tables() -> None:
    (store,) = yaml.safe_load(SOURCES_YML.read_text())["sources"]
    freshness = store["config"]["freshness"]
    minutes = {"minute": 1, "hour": 60}
    warn, error = (
        freshness[k]["count"] * minutes[freshness[k]["period"]] for k in ("warn_after", "error_after")
    )
    assert 2 < warn < error, "warn later than the marts' 2-minute goal, error later than warn"
    tables = {t["name"]: t for t in store["tables"]}
    for name in ("shop_order", "shop_orderline"):
        assert "freshness" not in tables[name].get("config", {}), f"{name} keeps the source's freshness"


def test_the_loader_creates_every_mirror_table() -> None:
    names = {t.mirror_table for t in STORE_TABLES}
    assert names <= set(MIRROR_TABLES)
